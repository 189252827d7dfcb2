"""The networks: the video DiT, its text and identity encoders, the video VAE, and the
layers and attention backends they share."""
