"""The causal 3D video VAE on the built-in synthetic faces (the DiT's latent space).

  python -m experiments.train --config=configs/vae_synthetic.py --workdir=runs/vae
  python -m tools.encode_latents --vae_workdir=runs/vae \
      --data_dir=data/synthetic_faces_latent --out=data/synthetic_faces_latent_cache

9x64x64 clips -> 3x8x8x8 latents (4x time with the first frame alone, 8x space, 8
channels). Loss: L1 reconstruction + vae.kl_weight x KL; at the end of training the
per-channel latent shift/scale are stored next to the checkpoints (latent_stats.json).
Args: frames, res, channels (latent), base, steps; runlocal for tests.
"""

from configs import common

# The synthetic dataset the VAE and configs/faces_latent.py share.
DATA = dict(dataset="synthetic_faces", data_dir="data/synthetic_faces_latent", frames=9,
            height=64, width=64, num_identities=200, clips_per_identity=4, test_fraction=0.2)


def vae_group(base=16, channels=8, time_down=2, ch_mult=(1, 2, 4, 4)):
  return dict(base=base, ch_mult=ch_mult, num_res=1, time_down=time_down,
              latent_channels=channels, groups=8, recon="l1", kl_weight=1e-4,
              stats_batches=16)


def get_config(arg=None):
  arg = common.parse_arg(arg, frames=9, res=64, channels=8, base=16, steps=0, runlocal=False)
  config = common.base_config()
  config.task = "vae"
  config.vae = vae_group(arg.base, arg.channels)
  config.data.update(DATA)
  config.data.update(frames=arg.frames, height=arg.res, width=arg.res, batch_size=8)
  config.model.update(dtype="float32", channels=3)
  config.text.encoder = "none"
  config.identity.mode = "none"
  config.optim.update(lr=1e-3, warmup_steps=50, final_lr_frac=0.1, grad_clip=1.0)
  config.ema.update(decay=0.99)
  config.train.log_every = 25
  config.sample.every_steps = 0
  config.total_steps = 600
  config.ckpt.update(every_steps=200, keep=2)
  if arg.runlocal:
    config.vae.update(base=8, ch_mult=(1, 2, 2), time_down=1, latent_channels=4,
                      stats_batches=2)
    config.data.update(data_dir="data/synthetic_faces_vae_runlocal", frames=5, height=32,
                       width=32, batch_size=4, num_identities=10, clips_per_identity=2)
    config.optim.update(lr=3e-3, warmup_steps=5)
    config.train.log_every = 5
    config.total_steps = 40
    config.ckpt.update(every_steps=20, keep=2)
  if arg.steps:
    config.total_steps = arg.steps
  config.lock()
  return config
