"""The identity-consistent DiT in the VAE's latent space, with MiniLM text.

  python -m experiments.train --config=configs/vae_synthetic.py --workdir=runs/vae
  python -m tools.encode_latents --vae_workdir=runs/vae \
      --data_dir=data/synthetic_faces_latent --out=data/synthetic_faces_latent_cache
  python -m experiments.train --config=configs/faces_latent.py --workdir=runs/faces_latent
  python -m experiments.evaluate --workdir=runs/faces_latent
  python -m experiments.sample --workdir=runs/faces_latent --face=F.png --prompt="..."

The DiT reads the cache's 3x8x8x8 latents (9x64x64 clips), 48 tokens of tubelet
1x2x2; text is frozen MiniLM-L6 (token embeddings + pooled vector, stored with the
dataset); samples are decoded by the same VAE, and evaluation compares the decoded
videos with the real clips the cache carries. ``source=encode`` encodes pixels on the fly
instead of reading the cache (data.data_dir = the pixel dataset). Args: vae (workdir),
cache (data_dir), source, steps; runlocal for tests (pairs with vae_synthetic:runlocal).
"""

from configs import common
from configs import synthetic_faces
from configs import vae_synthetic
from video_dit.models import registry


def get_config(arg=None):
  arg = common.parse_arg(arg, vae="runs/vae", cache="data/synthetic_faces_latent_cache",
                         source="cache", steps=0, runlocal=False)
  vae = vae_synthetic.get_config("runlocal" if arg.runlocal else None)
  config = common.base_config()
  synthetic_faces.identity_bench(config, steps=4000)
  config.data.update(vae_synthetic.DATA)
  config.data.update(frames=vae.data.frames, height=vae.data.height, width=vae.data.width,
                     data_dir=arg.cache if arg.source == "cache" else vae.data.data_dir)
  v = vae.vae
  shape = registry.vae_config(vae).latent_shape(registry.pixel_shape(vae))
  config.latent = dict(source=arg.source, codec="vae", vae_workdir=arg.vae, shape=shape)
  # Latent patches of 1x2x2: the pixel recipe's 2-pixel output margin does not fit them.
  config.model.update(patch=(1, 2, 2), channels=v.latent_channels, head="linear")
  config.text.update(encoder="precomputed", precomputed="minilm", max_len=16)
  # Reference tokens are encoded with the DiT's codec, which a VAE does not do yet:
  # identity through its cross-attention only.
  config.identity.update(face_size=32, mode="separate")
  config.data.batch_size = 32
  if arg.runlocal:
    common.runlocal(config)
    config.data.update(vae.data.to_dict())
    config.data.update(data_dir=arg.cache if arg.source == "cache" else vae.data.data_dir)
    config.model.update(patch=(1, 2, 2), channels=v.latent_channels, head="linear")
    config.text.update(encoder="precomputed", max_len=16)
    config.total_steps = 10
  if arg.steps:
    config.total_steps = arg.steps
  config.lock()
  return config
