"""Temporal consistency of a generated clip.

Given per-frame identity embeddings (from ``face_id`` for real faces or an
identity probe for synthetic ones) and the frames themselves:

* ``embedding_variance``: mean squared distance of the frames' embeddings to
  their mean (0 = the identity never wavers);
* ``frame_change``: mean absolute change between consecutive frames, in [0, 1]
  pixel units (0 = a still image; large = flicker);
* ``drift``: 1 - cosine similarity of the first and last frames' embeddings;
* ``seams`` (given the DiT's tubelet in pixels): the mean change between neighbouring
  pixels across token borders over that elsewhere (``spatial``), and between
  consecutive frames across tubelet borders over that within tubelets (``temporal``).
  About 1 when nothing marks the token grid; real clips give the scale.
"""

from __future__ import annotations

import numpy as np


def embedding_variance(embeddings_td: np.ndarray) -> float:
  e = np.asarray(embeddings_td, np.float64)
  return float(np.mean(np.sum((e - e.mean(0)) ** 2, axis=-1)))


def frame_change(frames_thwc: np.ndarray) -> float:
  f = _unit(frames_thwc)  # uint8, or [-1, 1]
  if len(f) < 2:
    raise ValueError("frame_change needs at least 2 frames")
  return float(np.mean(np.abs(f[1:] - f[:-1])))


def drift(embeddings_td: np.ndarray) -> float:
  e = np.asarray(embeddings_td, np.float64)
  first, last = e[0], e[-1]
  return float(1.0 - first @ last / max(np.linalg.norm(first) * np.linalg.norm(last), 1e-12))


def _unit(frames):
  f = np.asarray(frames, np.float64)
  return f / 255.0 if np.asarray(frames).dtype == np.uint8 else (f + 1.0) / 2.0


def seams(videos, tubelet) -> dict:
  """Token-grid seams of (N, T, H, W, C) clips cut into ``tubelet`` (pt, ph, pw) pixel
  tubelets: change across token borders over change elsewhere, spatial and temporal
  (temporal only when a clip has more than one tubelet in time and pt > 1)."""
  v = _unit(videos)
  pt, ph, pw = tubelet
  out = {}
  dy = np.abs(np.diff(v, axis=2)).mean(axis=(0, 1, 3, 4))  # between rows y and y+1
  dx = np.abs(np.diff(v, axis=3)).mean(axis=(0, 1, 2, 4))
  border_y = (np.arange(len(dy)) % ph) == ph - 1
  border_x = (np.arange(len(dx)) % pw) == pw - 1
  if (ph > 1 and border_y.any()) or (pw > 1 and border_x.any()):
    across = np.concatenate([dy[border_y], dx[border_x]]).mean()
    within = np.concatenate([dy[~border_y], dx[~border_x]]).mean()
    out["spatial"] = float(across / max(within, 1e-12))
  dt = np.abs(np.diff(v, axis=1)).mean(axis=(0, 2, 3, 4))  # between frames f and f+1
  border_t = (np.arange(len(dt)) % pt) == pt - 1
  if pt > 1 and border_t.any():
    out["temporal"] = float(dt[border_t].mean() / max(dt[~border_t].mean(), 1e-12))
  return out


def summary(videos, embeddings=None, tubelet=None) -> dict:
  """The evaluator's temporal block for a set of clips: ``frame_change`` averaged over
  every clip, ``embedding_variance`` / ``drift`` averaged over the clips whose
  per-frame identity embeddings are given (``embeddings``: a list of (T_i, D) arrays,
  e.g. only the clips where a face was found; those with < 2 frames are left out), and
  the token-grid ``seams`` when the pixel ``tubelet`` is given."""
  out = dict(frame_change=float(np.mean([frame_change(v) for v in videos])))
  if tubelet is not None:
    out["seams"] = seams(np.stack(list(videos)), tubelet)
  embeddings = [e for e in ([] if embeddings is None else embeddings) if len(e) > 1]
  if embeddings:
    out.update(embedding_variance=float(np.mean([embedding_variance(e) for e in embeddings])),
               drift=float(np.mean([drift(e) for e in embeddings])))
  return out
