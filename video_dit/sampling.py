"""Sampling videos from a model: one jitted function per (shape, sampler), and writers.

``make_sampler`` returns ``fn(params, cond, key) -> video`` that runs the whole
sampler loop (``lax.scan``) with dual guidance inside one jit, batch-sharded
over the mesh when called under ``jax.set_mesh``.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np
from PIL import Image

from video_dit import video_io
from video_dit.diffusion import Diffusion, SamplerConfig


def make_sampler(model, diffusion: Diffusion, sampler: SamplerConfig,
                 shape: tuple[int, ...]) -> Callable:
  """Jitted ``(params, cond, key) -> (B, T, H, W, C)`` float32 video in model space."""
  sampler.check(diffusion.config.objective)

  def sample(params, cond, key):
    model_fn = lambda x, t, c: model.apply(params, x, t, **c)
    return diffusion.sample(model_fn, shape, cond, key, sampler)

  return jax.jit(sample)


def to_uint8(x) -> np.ndarray:
  """[-1, 1] floats -> uint8 (clipped)."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def frame_grid(video_thwc: np.ndarray, face_hwc: np.ndarray | None = None) -> np.ndarray:
  """One row: the reference face (resized to the frame height), then every frame."""
  t, h, w, _ = video_thwc.shape
  parts = []
  if face_hwc is not None:
    parts.append(np.asarray(Image.fromarray(face_hwc).resize((h, h), Image.BICUBIC)))
    parts.append(np.full((h, max(2, w // 16), 3), 255, np.uint8))
  parts.extend(video_thwc)
  return np.concatenate(parts, axis=1)


def write_sample(prefix: str, video_thwc: np.ndarray, face_hwc: np.ndarray | None = None,
                 fps: float = 8.0) -> list[str]:
  """Writes ``prefix``.mp4 and ``prefix``.png (face + frames); returns the paths."""
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
  video_io.write_video(prefix + ".mp4", video_thwc, fps)
  Image.fromarray(frame_grid(video_thwc, face_hwc)).save(prefix + ".png")
  return [prefix + ".mp4", prefix + ".png"]
