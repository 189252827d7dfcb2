"""video_dit: identity-consistent video diffusion transformers in JAX."""
