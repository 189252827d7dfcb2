"""A fitted linear tubelet codec: principal components of (pt, p, p) pixel tubelets.

    video (B, T, H, W, 3)  --encode-->  latents (B, T/pt, H/p, W/p, C)

Each non-overlapping pt x p x p x 3 tubelet is centred by the training mean and
projected onto the C leading principal components of the training tubelets; decoding
is the transpose (the least-squares reconstruction from C numbers). Latents are
normalised per component (``whiten``: each component to unit variance, so the DiT's
loss weighs fine detail like coarse layout) or by one global scale.

Why a linear codec: on the CPU budget a conv VAE trains slowly (the causal VAE reached
15 dB; a 2D conv autoencoder 26.7 dB after 6 minutes), while the SVD of a few thousand
clips takes seconds and reaches >= 30 dB on held-out synthetic clips (README table).
The fit is deterministic, stored with the dataset (``<data_dir>/codecs/``, npz without
pickles + a json with its held-out PSNR), and reused by every run on that dataset.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

CODEC_DIR = "codecs"


def tubelets(video_bthwc, tubelet):
  """(B, T, H, W, C) -> (B, T/pt, H/p, W/p, pt*p*p*C)."""
  pt, ph, pw = tubelet
  b, t, h, w, c = video_bthwc.shape
  x = video_bthwc.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  return x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, t // pt, h // ph, w // pw, -1)


def untubelets(x, tubelet, channels: int = 3):
  """The inverse of ``tubelets``."""
  pt, ph, pw = tubelet
  b, t, h, w, _ = x.shape
  x = x.reshape(b, t, h, w, pt, ph, pw, channels).transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, t * pt, h * ph, w * pw, channels)


def latent_shape(tubelet, channels: int, pixel_shape) -> tuple[int, int, int, int]:
  """(T, H, W, 3) pixels -> (T', H', W', C); raises with the fix when not divisible."""
  t, h, w = pixel_shape[:3]
  pt, ph, pw = tubelet
  if t % pt or h % ph or w % pw:
    raise ValueError(f"video of {t}x{h}x{w} does not split into latent.tubelet="
                     f"{tuple(tubelet)} tubelets; use frames divisible by {pt} and height/"
                     f"width divisible by {ph}/{pw}")
  return (t // pt, h // ph, w // pw, channels)


def check(tubelet, channels: int, pixel_shape) -> None:
  """Raises naming the bad ``latent.tubelet`` / ``latent.channels`` value."""
  tubelet = tuple(int(x) for x in tubelet)
  if len(tubelet) != 3 or min(tubelet) < 1:
    raise ValueError(f"latent.tubelet={tubelet} must be three positive sizes (pt, ph, pw).")
  dim = int(np.prod(tubelet)) * pixel_shape[-1]
  if not 1 <= channels <= dim:
    raise ValueError(f"latent.channels={channels} must be in [1, {dim}] (a {tubelet} "
                     f"tubelet holds {dim} values).")
  latent_shape(tubelet, channels, pixel_shape)


def fit(clips: np.ndarray, tubelet, channels: int, whiten: bool) -> dict[str, np.ndarray]:
  """Mean, components (C, D) and per-component scale of a stack of clips in [-1, 1]."""
  x = np.asarray(tubelets(np.asarray(clips, np.float64), tubelet)).reshape(
      -1, int(np.prod(tubelet)) * clips.shape[-1])
  mean = x.mean(0)
  _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
  sign = np.where(vt[:channels].sum(1) < 0, -1.0, 1.0)[:, None]  # a fixed sign per component
  basis = vt[:channels] * sign
  std = s[:channels] / np.sqrt(len(x))
  scale = std if whiten else np.full_like(std, np.sqrt(np.mean(std ** 2)))
  return dict(mean=mean.astype(np.float32), basis=basis.astype(np.float32),
              scale=np.maximum(scale, 1e-6).astype(np.float32),
              explained=(s[:channels] ** 2 / np.sum(s ** 2)).astype(np.float32))


class PCACodec:
  """A fitted codec file: pixels in [-1, 1] <-> normalised latents, jitted."""

  step = 0

  def __init__(self, path: str):
    if not os.path.exists(path):
      raise FileNotFoundError(f"no fitted codec at {path}; it is fitted with the dataset "
                              "(python -m experiments.train fits it on first use)")
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    with open(path[:-len(".npz")] + ".json", encoding="utf-8") as f:
      self.info = json.load(f)
    self.workdir = path
    self.tubelet = tuple(self.info["tubelet"])
    self.channels = int(arrays["basis"].shape[0])
    self.digest = hashlib.sha256(b"".join(
        arrays[k].tobytes() for k in ("mean", "basis", "scale"))).hexdigest()
    # numpy constants: the codec may first be built inside a trace (the train step)
    mean, basis, scale = (np.asarray(arrays[k], np.float32) for k in ("mean", "basis", "scale"))
    tub = self.tubelet
    self._encode = jax.jit(lambda x: (tubelets(x, tub) - mean) @ basis.T / scale)
    self._decode = jax.jit(lambda z: jnp.clip(untubelets((z * scale) @ basis + mean, tub),
                                              -1.0, 1.0))

  def latent_shape(self, pixel_shape) -> tuple[int, int, int, int]:
    return latent_shape(self.tubelet, self.channels, pixel_shape)

  def encode(self, video_bthwc) -> jax.Array:
    """Pixels in [-1, 1] -> normalised latents."""
    return self._encode(jnp.asarray(video_bthwc, jnp.float32))

  def decode(self, latents_bthwc) -> jax.Array:
    """Normalised latents -> pixels in [-1, 1]."""
    return self._decode(jnp.asarray(latents_bthwc, jnp.float32))

  def lower_decode(self, latent_shape_bthwc):
    """The decode program lowered for a batch of latents of that shape (for its cost)."""
    return self._decode.lower(jax.ShapeDtypeStruct(latent_shape_bthwc, jnp.float32))


_LOADED: dict[str, PCACodec] = {}


def load(path: str) -> PCACodec:
  """The codec at ``path``, loaded once per process."""
  path = os.path.abspath(path)
  if path not in _LOADED:
    _LOADED[path] = PCACodec(path)
  return _LOADED[path]


def path_for(config) -> str:
  """Where the fit of ``config.latent`` on ``config.data`` lives (``<data_dir>/codecs/``)."""
  lat, d = config.latent, config.data
  tag = "x".join(str(int(x)) for x in lat.tubelet)
  name = (f"pca_{tag}_c{lat.channels}_{'white' if lat.whiten else 'global'}_"
          f"{d.frames}f_{d.height}x{d.width}_{lat.fit_clips}clips.npz")
  return os.path.join(d.data_dir, CODEC_DIR, name)


def psnr(a, b) -> np.ndarray:
  """Per-clip PSNR (dB) of clips in [-1, 1]."""
  mse = np.mean((np.clip(a, -1, 1) - b) ** 2, axis=tuple(range(1, np.ndim(a))))
  return 10.0 * np.log10(4.0 / np.maximum(mse, 1e-10))


def _write_json(path: str, info: dict) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(info, f, indent=1)
  os.replace(path + ".tmp", path)


def ensure(config, clips, log=print) -> str:
  """Fits ``config.latent`` on the training clips unless the fit exists; returns its path.

  ``clips(split, n)`` -> the split's first ``n`` pixel clips (``pipeline.first_clips``).
  The held-out PSNR (up to 512 test clips) is measured once and stored in the json."""
  path = path_for(config)
  if os.path.exists(path):
    return path
  lat = config.latent
  if jax.process_index() == 0:
    train = clips("train", lat.fit_clips)
    arrays = fit(train, lat.tubelet, lat.channels, lat.whiten)
    info = dict(tubelet=[int(x) for x in lat.tubelet], channels=int(lat.channels),
                whiten=bool(lat.whiten), fit_clips=len(train),
                explained_variance=float(arrays["explained"].sum()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = path[:-len(".npz")] + ".json"
    _write_json(meta, info)  # before the npz: an npz on disk means a complete fit
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    codec = PCACodec(path)
    test = clips("test", 512)
    values = np.concatenate([psnr(np.asarray(codec.decode(codec.encode(test[i:i + 64]))),
                                  test[i:i + 64]) for i in range(0, len(test), 64)])
    info.update(test_clips=len(test), test_psnr_db=float(values.mean()),
                test_psnr_ci95=float(1.96 * values.std() / np.sqrt(len(values))),
                digest=codec.digest)
    _write_json(meta, info)
    log(f"fitted the latent codec ({lat.channels} components of {tuple(lat.tubelet)} "
        f"tubelets) on {len(train)} clips: held-out PSNR {info['test_psnr_db']:.2f} dB "
        f"-> {path}")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("pca codec fitted")
  return path
