"""Temporal consistency of a generated clip.

Given per-frame identity embeddings (from ``face_id`` for real faces or an
identity probe for synthetic ones) and the frames themselves:

* ``embedding_variance``: mean squared distance of the frames' embeddings to
  their mean (0 = the identity never wavers);
* ``frame_change``: mean absolute change between consecutive frames, in [0, 1]
  pixel units (0 = a still image; large = flicker);
* ``drift``: 1 - cosine similarity of the first and last frames' embeddings.
"""

from __future__ import annotations

import numpy as np


def embedding_variance(embeddings_td: np.ndarray) -> float:
  e = np.asarray(embeddings_td, np.float64)
  return float(np.mean(np.sum((e - e.mean(0)) ** 2, axis=-1)))


def frame_change(frames_thwc: np.ndarray) -> float:
  f = np.asarray(frames_thwc, np.float64)
  if np.asarray(frames_thwc).dtype == np.uint8:
    f = f / 255.0
  else:  # [-1, 1]
    f = (f + 1.0) / 2.0
  if len(f) < 2:
    raise ValueError("frame_change needs at least 2 frames")
  return float(np.mean(np.abs(f[1:] - f[:-1])))


def drift(embeddings_td: np.ndarray) -> float:
  e = np.asarray(embeddings_td, np.float64)
  first, last = e[0], e[-1]
  return float(1.0 - first @ last / max(np.linalg.norm(first) * np.linalg.norm(last), 1e-12))


def summary(videos, embeddings=None) -> dict:
  """The evaluator's temporal block for a set of clips: ``frame_change`` averaged over
  every clip, and ``embedding_variance`` / ``drift`` averaged over the clips whose
  per-frame identity embeddings are given (``embeddings``: a list of (T_i, D) arrays,
  e.g. only the clips where a face was found; those with < 2 frames are left out)."""
  out = dict(frame_change=float(np.mean([frame_change(v) for v in videos])))
  embeddings = [e for e in ([] if embeddings is None else embeddings) if len(e) > 1]
  if embeddings:
    out.update(embedding_variance=float(np.mean([embedding_variance(e) for e in embeddings])),
               drift=float(np.mean([drift(e) for e in embeddings])))
  return out
