"""Spacetime (tubelet) patchify / unpatchify: one function pair, exact inverses.

A tubelet of (pt, ph, pw) voxels becomes one token of pt*ph*pw*C values, the
values ordered (pt, ph, pw, C); tokens are ordered (t, h, w) row-major. This is
the same as a Conv3D with kernel = stride followed by a flatten.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def grid_shape(video_shape: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
  """(T', H', W') token grid of a (T, H, W) video for tubelet ``patch``."""
  (t, h, w), (pt, ph, pw) = video_shape, patch
  for name, size, p in (("frames", t, pt), ("height", h, ph), ("width", w, pw)):
    if size % p:
      raise ValueError(f"{name}={size} is not divisible by the tubelet size {p} on that "
                       f"axis (patch={tuple(patch)}); use a multiple of {p}.")
  return t // pt, h // ph, w // pw


def patchify(x_bthwc: jnp.ndarray, patch: Sequence[int]) -> jnp.ndarray:
  """(B, T, H, W, C) -> (B, T'*H'*W', pt*ph*pw*C)."""
  b, t, h, w, c = x_bthwc.shape
  pt, ph, pw = patch
  gt, gh, gw = grid_shape((t, h, w), patch)
  x = x_bthwc.reshape(b, gt, pt, gh, ph, gw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T', H', W', pt, ph, pw, C)
  return x.reshape(b, gt * gh * gw, pt * ph * pw * c)


def unpatchify(tokens_bld: jnp.ndarray, grid: Sequence[int],
               patch: Sequence[int]) -> jnp.ndarray:
  """(B, T'*H'*W', pt*ph*pw*C) -> (B, T, H, W, C); the exact inverse of patchify."""
  b, length, d = tokens_bld.shape
  gt, gh, gw = grid
  pt, ph, pw = patch
  if length != gt * gh * gw or d % (pt * ph * pw):
    raise ValueError(f"tokens of shape {tokens_bld.shape} do not fit grid {tuple(grid)} "
                     f"with tubelet {tuple(patch)}")
  c = d // (pt * ph * pw)
  x = tokens_bld.reshape(b, gt, gh, gw, pt, ph, pw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)  # (B, T', pt, H', ph, W', pw, C)
  return x.reshape(b, gt * pt, gh * ph, gw * pw, c)


def grid_positions(grid: Sequence[int]) -> jnp.ndarray:
  """(T'*H'*W', 3) float32 (t, h, w) coordinates in token order."""
  gt, gh, gw = grid
  t, h, w = jnp.meshgrid(jnp.arange(gt), jnp.arange(gh), jnp.arange(gw), indexing="ij")
  return jnp.stack([t.ravel(), h.ravel(), w.ravel()], axis=-1).astype(jnp.float32)
