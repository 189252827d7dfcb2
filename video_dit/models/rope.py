"""3D rotary position embedding and fixed sin-cos absolute embeddings.

RoPE rotates pairs of q/k channels by angles proportional to the token's
position, so q.k depends only on position *differences*. For video the head
dimension is split into three even parts that rotate with t, h and w; any
duration, resolution or aspect ratio works without a learned table.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def default_split(head_dim: int) -> tuple[int, int, int]:
  """A (t, h, w) split of ``head_dim``: about 3/8 each to h and w, the rest to t."""
  hw = 2 * ((head_dim * 3 // 8) // 2)
  return head_dim - 2 * hw, hw, hw


def check_split(split: Sequence[int], head_dim: int) -> tuple[int, int, int]:
  """Validates a (t, h, w) RoPE split against ``head_dim``; returns it as a tuple."""
  split = tuple(int(s) for s in split)
  if len(split) != 3 or any(s < 0 or s % 2 for s in split) or sum(split) != head_dim:
    raise ValueError(f"rope split {split} does not fit head_dim={head_dim}: it needs "
                     f"three even, non-negative sizes summing to {head_dim}, e.g. "
                     f"{default_split(head_dim)} (or leave model.rope_split empty).")
  return split


def rope_angles(positions_l3: jnp.ndarray, split: Sequence[int],
                theta: float = 10000.0) -> jnp.ndarray:
  """(L, 3) positions -> (L, head_dim // 2) rotation angles."""
  parts = []
  for axis, dim in enumerate(split):
    if dim == 0:
      continue
    inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # (dim/2,)
    parts.append(positions_l3[:, axis:axis + 1].astype(jnp.float32) * inv_freq)
  return jnp.concatenate(parts, axis=-1)


def apply_rope(x_blhd: jnp.ndarray, angles_lk: jnp.ndarray) -> jnp.ndarray:
  """Rotates channel pairs (2i, 2i+1) of (B, L, H, D) by (L, D/2) angles, in f32."""
  dtype = x_blhd.dtype
  x = x_blhd.astype(jnp.float32).reshape(*x_blhd.shape[:-1], -1, 2)
  cos = jnp.cos(angles_lk)[None, :, None, :]
  sin = jnp.sin(angles_lk)[None, :, None, :]
  x0, x1 = x[..., 0], x[..., 1]
  out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
  return out.reshape(x_blhd.shape).astype(dtype)


def sincos_1d(positions: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
  """(N,) positions -> (N, dim) [sin | cos] features; ``dim`` must be even."""
  freqs = max_period ** (-jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
  args = positions.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def sincos_nd(positions_ln: jnp.ndarray, dim: int) -> jnp.ndarray:
  """(L, n) positions -> (L, dim) fixed embedding, ``dim`` split evenly over the n axes.

  Each axis gets an even share; what is left over (dim not a multiple of 2n) is
  padded with zeros at the end.
  """
  n = positions_ln.shape[-1]
  per_axis = 2 * (dim // (2 * n))
  parts = [sincos_1d(positions_ln[:, i], per_axis) for i in range(n)]
  out = jnp.concatenate(parts, axis=-1)
  return jnp.pad(out, ((0, 0), (0, dim - out.shape[-1])))
