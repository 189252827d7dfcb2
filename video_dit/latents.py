"""The DiT's latent space: a trained video VAE, its latent statistics, and the codec.

  W/latent_stats.json   written by VAE training next to its checkpoints: per-channel
                        shift (mean) and scale (std) of the posterior means over
                        training clips, and the checkpoint step they belong to.

``LatentCodec`` loads a VAE workdir (EMA parameters + statistics) and maps pixels in
[-1, 1] to normalised latents ((z - shift) / scale, unit variance per channel, what
the DiT learns to generate) and back.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

STATS_FILE = "latent_stats.json"


def compute_stats(model, params, videos) -> dict:
  """Per-channel mean and std of the posterior means of an iterable of video batches."""
  encode = jax.jit(lambda p, x: model.apply(p, x, method=model.encode)[0])
  total, total_sq, count = 0.0, 0.0, 0
  for x in videos:
    z = np.asarray(encode(params, x), np.float64)
    flat = z.reshape(-1, z.shape[-1])
    total, total_sq, count = total + flat.sum(0), total_sq + (flat ** 2).sum(0), count + len(flat)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
  return dict(shift=mean.tolist(), scale=std.tolist(), num_latents=int(count))


def write_stats(workdir: str, step: int, stats: dict) -> str:
  path = os.path.join(workdir, STATS_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(dict(stats, step=int(step)), f, indent=2)
  os.replace(tmp, path)  # atomic
  return path


def read_stats(workdir: str) -> dict:
  path = os.path.join(workdir, STATS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: the VAE in {workdir} has no latent "
                            "statistics; finish (or re-run) its training with "
                            "python -m experiments.train --workdir=" + workdir)
  with open(path) as f:
    return json.load(f)


class LatentCodec:
  """A trained VAE (EMA parameters of its latest checkpoint) with its statistics."""

  def __init__(self, vae_workdir: str, step: int | None = None):
    from video_dit import sampling  # pylint: disable=g-import-not-at-top
    from video_dit.models import registry  # pylint: disable=g-import-not-at-top
    config, model, params, ckpt_step, self.digest = sampling.load_checkpoint(vae_workdir, step)
    if registry.task(config) != "vae":
      raise ValueError(f"{vae_workdir} holds a '{registry.task(config)}' checkpoint, not a VAE "
                       "(train one with configs/vae_synthetic.py)")
    stats = read_stats(vae_workdir)
    if stats["step"] != ckpt_step:
      raise ValueError(f"{vae_workdir}: latent statistics are of step {stats['step']} but the "
                       f"checkpoint is step {ckpt_step}; re-run its training command to "
                       "recompute them")
    self.workdir, self.step, self.config = vae_workdir, ckpt_step, config
    self.model, self.params = model, params
    self.cfg = model.cfg
    self.shift = jnp.asarray(stats["shift"], jnp.float32)
    self.scale = jnp.asarray(stats["scale"], jnp.float32)
    self._encode = jax.jit(lambda p, x: (model.apply(p, x, method=model.encode)[0]
                                         - self.shift) / self.scale)
    self._decode = jax.jit(lambda p, z: jnp.clip(
        model.apply(p, z * self.scale + self.shift, method=model.decode), -1.0, 1.0))

  def latent_shape(self, pixel_shape) -> tuple[int, int, int, int]:
    return self.cfg.latent_shape(pixel_shape)

  def encode(self, video_bthwc) -> jax.Array:
    """Pixels in [-1, 1] -> normalised latents (posterior mean)."""
    return self._encode(self.params, video_bthwc)

  def decode(self, latents_bthwc) -> jax.Array:
    """Normalised latents -> pixels in [-1, 1]."""
    return self._decode(self.params, latents_bthwc)


_CODECS: dict[str, LatentCodec] = {}


def codec(config) -> LatentCodec | None:
  """The codec of a DiT config's ``latent.vae_workdir`` (loaded once per process), or
  None when the DiT works on pixels."""
  if "latent" not in config or config.latent.source == "pixels":
    return None
  workdir = os.path.abspath(config.latent.vae_workdir)
  if workdir not in _CODECS:
    _CODECS[workdir] = LatentCodec(workdir)
  return _CODECS[workdir]
