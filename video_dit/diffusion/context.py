"""Frame conditioning: which frames of a clip are given, in training and in sampling.

One model does text-to-video (no frame given), image-to-video (the first frame given)
and continuation (the first k frames given), after Open-Sora's masks and diffusion
forcing: in training a ``train.context_rate`` share of the examples get some of their
frames as context, clean or lightly noised (per-example level in
``[0, train.context_noise]``), and the loss ignores those frames; the model reads
which tokens are context from ``context_mask`` (``VideoDiT``). Frames are given in
whole tubelets (``model.patch[0]`` frames of the model's input: one token frame).

The batch / condition fields (``conditions.CONTEXT_FIELDS``)::

  context       (B, T, H, W, C)  the given frames' clean values (elsewhere unused)
  context_mask  (B, T) bool      which frames are given
  context_t     (B,)             their noise level in model time (0 = clean)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Kinds of context drawn in training: a prefix of k token frames (continuation), the
# first frame held still over the first tubelet (image-to-video from one still), and a
# random subset of token frames (diffusion forcing's independent per-frame levels).
KINDS = {"prefix": 0.5, "still": 0.25, "random": 0.25}


def prefix_mask(batch: int, frames: int, given: int) -> np.ndarray:
  """(B, T) bool: the first ``given`` frames."""
  return np.broadcast_to(np.arange(frames) < given, (batch, frames)).copy()


def check_given(given: int, frames: int, tubelet: int, what: str = "given frames") -> None:
  """Raises unless ``given`` frames are whole tubelets and leave frames to generate."""
  if given % tubelet or not 0 <= given < frames:
    raise ValueError(f"{given} {what} must be a multiple of the model's tubelet depth "
                     f"{tubelet} and fewer than the {frames} frames of a clip.")


def still_clip(frame_bhwc, tubelet: int):
  """One still frame as the first tubelet of a clip: (B, tubelet, H, W, C)."""
  return jnp.repeat(frame_bhwc[:, None], tubelet, axis=1)


def draw(key, x0_bthwc, tubelet: int, rate: float, max_noise: float) -> dict:
  """Per example: with probability ``rate`` some token frames become context (a kind
  from ``KINDS``), never all of them; the rest of the batch gets an all-False mask.
  -> the three fields (``context`` holds the clean values; the loss noises them)."""
  b, frames = x0_bthwc.shape[:2]
  n = frames // tubelet
  k_on, k_kind, k_len, k_rand, k_drop, k_clean, k_t = jax.random.split(key, 7)
  on = jax.random.uniform(k_on, (b,)) < rate
  kind = jax.random.choice(k_kind, len(KINDS), (b,), p=jnp.asarray(list(KINDS.values())))
  k = jax.random.randint(k_len, (b,), 1, n)                       # prefix: 1 .. n-1
  idx = jnp.arange(n)
  prefix = idx[None] < jnp.where(kind == 1, 1, k)[:, None]          # still: the first
  subset = jax.random.bernoulli(k_rand, 0.5, (b, n))
  subset = subset & (idx[None] != jax.random.randint(k_drop, (b, 1), 0, n))  # not all
  tokens = jnp.where((kind == 2)[:, None], subset, prefix) & on[:, None]
  mask = jnp.repeat(tokens, tubelet, axis=1)                      # (B, T)
  still = jnp.concatenate([still_clip(x0_bthwc[:, 0], tubelet), x0_bthwc[:, tubelet:]], 1)
  context = jnp.where((kind == 1)[:, None, None, None, None], still, x0_bthwc)
  level = jax.random.uniform(k_t, (b,), maxval=max_noise)
  context_t = jnp.where(jax.random.bernoulli(k_clean, 0.5, (b,)), 0.0, level)
  return dict(context=context, context_mask=mask, context_t=context_t.astype(jnp.float32))


def frame_weights(mask_bt, shape) -> jax.Array:
  """1 on the frames to generate, 0 on the given ones, broadcast to ``shape``."""
  keep = (~mask_bt).astype(jnp.float32)
  return jnp.broadcast_to(keep.reshape(keep.shape + (1,) * (len(shape) - 2)), shape)
