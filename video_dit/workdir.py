"""A training workdir, read back: its checkpoints, config, parameters and latent codec.

    W/config.json            the config of the run (written before training starts)
    W/checkpoints/<step>/    orbax checkpoints: state (params, EMA, optimizer, RNG),
                             data-iterator position, config
    W/latent_stats.json      a VAE's per-channel latent shift (mean) and scale (std) over
                             training clips, with the checkpoint step they belong to
    W/latent_codec.json      the PCA codec fit a run learns (its path and digest)

Sampling, evaluation, the latent cache and the trainer's ``ckpt.init_from`` all load a
workdir through this module. ``LatentCodec`` is a trained VAE workdir (EMA parameters
+ statistics) that maps pixels in [-1, 1] to normalised latents ((z - shift) / scale,
what a latent-space DiT learns to generate) and back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from video_dit import checkpoint
from video_dit.models import registry

STATS_FILE = "latent_stats.json"


checkpoint_dir = checkpoint.checkpoint_dir


def steps(workdir: str) -> list[int]:
  """The workdir's complete checkpoint steps, oldest first ([] when none)."""
  return checkpoint.steps(checkpoint_dir(workdir))


def latest_step(workdir: str) -> int | None:
  return max(steps(workdir), default=None)


def resolve_step(workdir: str, step: int | None = None) -> int:
  """``step`` (or the latest), checked to exist, with an error that says what to do."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir} has no checkpoints/ folder; train first with "
                            f"python -m experiments.train --workdir={workdir} ...")
  available = steps(workdir)
  if not available:
    raise FileNotFoundError(f"no complete checkpoint in {directory}")
  if step is not None and step not in available:
    raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; it has {available}")
  return available[-1] if step is None else step


def load_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """The config saved with a checkpoint (the latest by default)."""
  step = resolve_step(workdir, step)
  return ml_collections.ConfigDict(checkpoint.restore_config(checkpoint_dir(workdir), step))


@dataclasses.dataclass
class Restored:
  """A checkpoint on this host: its config, the model it builds, one set of parameters."""
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  step: int
  digest: str          # checkpoint.digest(params): tools.inspect_checkpoint prints both the
                       # params digest and the EMA one
  ema: bool            # params are the EMA parameters (else the trained ones)


def load(workdir: str, step: int | None = None, ema: bool = True) -> Restored:
  """A workdir's checkpoint (the latest by default), EMA parameters unless ``ema=False``."""
  step = resolve_step(workdir, step)
  config = load_config(workdir, step)
  check_codec(workdir, config)
  model = registry.build_model(config)
  _, state = checkpoint.load_host(checkpoint_dir(workdir), step)
  params = state["ema_params" if ema else "params"]
  return Restored(config, model, params, step, checkpoint.digest(params), ema)


CODEC_RECORD = "latent_codec.json"


def check_codec(workdir: str, config, record: bool = False) -> None:
  """A run on a fitted codec's latents learns one fit (``<data_dir>/codecs/``).

  ``record`` (the trainer) writes which, by digest, the first time; afterwards the fit
  the config names must be the same one. A fit made again (e.g. after
  ``tools.forget_identity`` removed the old one) would decode the run's latents wrong,
  so it raises, naming both.
  """
  if registry.latent_source(config) == "pixels" or registry.latent_codec(config) != "pca":
    return
  from video_dit import pca_codec  # pylint: disable=g-import-not-at-top
  path = pca_codec.path_for(config)
  if not os.path.exists(path):
    return  # loading it names the problem
  digest = pca_codec.load(path).digest
  rec = os.path.join(workdir, CODEC_RECORD)
  if os.path.exists(rec):
    with open(rec, encoding="utf-8") as f:
      learned = json.load(f)
    if learned["digest"] != digest:
      raise ValueError(
          f"{workdir} learned the latents of the codec fit {learned['digest'][:12]} "
          f"({learned['path']}), but the config's codec {path} is the fit {digest[:12]} "
          "(fitted again, e.g. after tools.forget_identity removed the old one), which "
          "would decode them wrong. Train again in a fresh --workdir.")
  elif record:
    tmp = f"{rec}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(dict(path=os.path.abspath(path), digest=digest), f, indent=1)
    os.replace(tmp, rec)


# ----------------------------------------------------------------------------- lock

LOCK_FILE = "train.lock"


class Lock:
  """``W/train.lock``: one trainer per workdir. It holds the trainer's pid, host and
  start time; a second trainer refuses, naming the holder. A lock whose process is
  gone (same host) is stale and taken over."""

  def __init__(self, workdir_path: str):
    self.path = os.path.join(workdir_path, LOCK_FILE)
    self.held = False

  def holder(self) -> dict | None:
    try:
      with open(self.path, encoding="utf-8") as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  @staticmethod
  def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
      return True  # cannot tell from here: assume it runs
    try:
      os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
      return False
    except (PermissionError, KeyError, ValueError, TypeError):
      return True
    return True

  def acquire(self) -> "Lock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self.holder()
        if holder is not None and self._alive(holder):
          raise RuntimeError(
              f"{os.path.dirname(self.path)} is in use by another trainer (pid "
              f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}); "
              f"wait for it or stop it, or use another --workdir. If that process is gone, "
              f"delete {self.path}.") from None
        print(f"taking over the stale lock {self.path} ({holder})", flush=True)
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(dict(pid=os.getpid(), host=socket.gethostname(),
                       started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), f)
      self.held = True
      return self
    raise RuntimeError(f"could not take {self.path}; another trainer keeps taking it")

  def release(self) -> None:
    if self.held and (self.holder() or {}).get("pid") == os.getpid():
      os.remove(self.path)
    self.held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# ----------------------------------------------------------------------------- latent codec


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
    r = load(vae_workdir, step)
    if registry.task(r.config) != "vae":
      raise ValueError(f"{vae_workdir} holds a '{registry.task(r.config)}' checkpoint, not a "
                       "VAE (train one with configs/vae_synthetic.py)")
    stats = read_stats(vae_workdir)
    if stats["step"] != r.step:
      raise ValueError(f"{vae_workdir}: latent statistics are of step {stats['step']} but the "
                       f"checkpoint is step {r.step}; re-run its training command to "
                       "recompute them")
    self.workdir, self.step, self.config, self.digest = vae_workdir, r.step, r.config, r.digest
    self.model, self.params = r.model, r.params
    self.cfg = r.model.cfg
    model = r.model
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

  def lower_decode(self, latent_shape_bthwc):
    """The decode program lowered for a batch of latents of that shape (for its cost)."""
    return self._decode.lower(self.params, jax.ShapeDtypeStruct(latent_shape_bthwc,
                                                                jnp.float32))

  def decode(self, latents_bthwc) -> jax.Array:
    """Normalised latents -> pixels in [-1, 1]."""
    return self._decode(self.params, latents_bthwc)


_CODECS: dict[str, LatentCodec] = {}


def codec(config) -> LatentCodec | None:
  """The codec of a latent-space DiT config (loaded once per process): its VAE
  (``latent.vae_workdir``) or its fitted PCA codec; None when the DiT works on pixels."""
  if registry.latent_source(config) == "pixels":
    return None
  if registry.latent_codec(config) == "pca":
    from video_dit import pca_codec  # pylint: disable=g-import-not-at-top
    return pca_codec.load(pca_codec.path_for(config))
  path = os.path.abspath(config.latent.vae_workdir)
  if path not in _CODECS:
    _CODECS[path] = LatentCodec(path)
  return _CODECS[path]
