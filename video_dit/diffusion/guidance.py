"""Dual classifier-free guidance over text and identity, one batched model call.

    v = v(null, null) + s_text (v(text, null) - v(null, null))
                      + s_id   (v(text, id)   - v(text, null))

(s_text, s_id) = (1, 1) is the fully conditional prediction, (0, 0) the
unconditional one, s_text = s_id = s plain CFG with scale s. The three branches
run as one call on a 3x batch whose ``drop_text`` / ``drop_id`` flags
select the model's learned null tokens; with s_text = 1 the first term cancels and
the call is on a 2x batch.

A guidance-distilled model (``model.guidance_embed``, ``tasks/distill.py``) takes the
scales as an input and gives the guided prediction in one pass (``one_pass``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

ModelFn = Callable  # (x_t (B, ...), t (B,), cond dict) -> prediction (B, ...)


def guided(model_fn: ModelFn, text_scale: float = 1.0, id_scale: float = 1.0,
           interval: tuple[float, float] | None = None,
           channels: int | None = None, one_pass: bool = False) -> ModelFn:
  """Wraps ``model_fn`` with dual guidance.

  Args:
    model_fn: ``(x, t, cond) -> prediction``; ``cond`` gains boolean (B,) entries
      ``drop_text`` and ``drop_id``.
    text_scale, id_scale: guidance scales (floats or traced scalars).
    interval: (t_lo, t_hi): guide only where t_lo <= t <= t_hi (model time, 1 =
      noise); elsewhere the fully conditional prediction is used.
    channels: guide only the first ``channels`` output channels (the rest, e.g.
      a learned variance, comes from the fully conditional branch).
    one_pass: the model takes the scales (``cond['guidance_scale']``, (B, 2)) and
      returns the guided prediction itself: one network pass per call.
  """
  fn = guided_stateful(lambda x, t, cond, state: (model_fn(x, t, cond), state), text_scale,
                       id_scale, interval, channels, one_pass)
  return lambda x, t, cond: fn(x, t, cond, None)[0]


def guided_stateful(model_fn: Callable, text_scale: float = 1.0, id_scale: float = 1.0,
                    interval: tuple[float, float] | None = None,
                    channels: int | None = None, one_pass: bool = False) -> Callable:
  """``guided`` for ``model_fn(x, t, cond, state) -> (prediction, state)``, e.g. the
  step cache's residual: -> ``fn(x, t, cond, state) -> (guided prediction, state)``.
  The state belongs to the network's batch, the 2x or 3x tiled one when guiding with
  two or three passes (``passes``); it goes through unchanged."""
  if one_pass:
    def fn1(x, t, cond, state):
      b = x.shape[0]
      scales = jnp.broadcast_to(jnp.stack([jnp.asarray(text_scale, jnp.float32),
                                           jnp.asarray(id_scale, jnp.float32)]), (b, 2))
      if interval is not None:  # outside the interval: (1, 1), the conditional model
        inside = (t >= interval[0]) & (t <= interval[1])
        scales = jnp.where(inside[:, None], scales, 1.0)
      return model_fn(x, t, dict(_with_drops(cond, b, False, False), guidance_scale=scales),
                      state)
    return fn1
  if passes(text_scale, id_scale, interval) == 1:
    return lambda x, t, cond, state: model_fn(x, t, _with_drops(cond, x.shape[0], False,
                                                                 False), state)

  # (drop_text, drop_id) per branch; with text scale 1 v(null, null) cancels.
  branches = ((True, True), (False, True), (False, False))
  if passes(text_scale, id_scale, interval) == 2:
    branches = branches[1:]

  def fn(x, t, cond, state):
    b, n = x.shape[0], len(branches)
    tile = lambda v: jnp.concatenate([v] * n, axis=0)
    cond_n = {k: jax.tree.map(tile, v) for k, v in cond.items()
              if k not in ("drop_text", "drop_id")}
    for i, name in enumerate(("drop_text", "drop_id")):
      cond_n[name] = jnp.concatenate([jnp.full((b,), br[i]) for br in branches])
    out, state = model_fn(tile(x), tile(t), cond_n, state)
    *uu, tu, ti = jnp.split(out, n, axis=0)
    if uu:
      g = uu[0] + text_scale * (tu - uu[0]) + id_scale * (ti - tu)
    else:
      g = tu + id_scale * (ti - tu)
    if channels is not None:
      g = jnp.concatenate([g[..., :channels], ti[..., channels:]], axis=-1)
    if interval is not None:
      inside = (t >= interval[0]) & (t <= interval[1])
      g = jnp.where(inside.reshape((b,) + (1,) * (g.ndim - 1)), g, ti)
    return g, state

  return fn


def passes(text_scale, id_scale, interval=None, one_pass: bool = False) -> int:
  """Network passes per guided call (one call on a 1x, 2x or 3x batch): 1 when the
  scales are (1, 1) with no interval (the fully conditional prediction alone) or the
  model is guidance-distilled (``one_pass``); 2 when only the text scale is 1 (the
  unconditional branch cancels); else 3. Traced scales always take 3."""
  if one_pass:
    return 1
  static = isinstance(text_scale, (int, float)) and isinstance(id_scale, (int, float))
  if interval is None and static and text_scale == 1:
    return 1 if id_scale == 1 else 2
  return 3


def _with_drops(cond, b, drop_text, drop_id):
  return dict(cond, drop_text=jnp.full((b,), drop_text), drop_id=jnp.full((b,), drop_id))


def separate_calls(model_fn: ModelFn, x, t, cond):
  """The three guidance branches as three calls (for checks and debugging)."""
  b = x.shape[0]
  return tuple(model_fn(x, t, _with_drops(cond, b, dt, di))
               for dt, di in ((True, True), (False, True), (False, False)))

