"""Attention: the backends behind one registry, and the attention modules.

Every backend computes softmax(q k^T / sqrt(Dh)) v over (B, L, H, Dh) arrays:

  einsum   plain XLA, softmax in float32; takes key masks; memory quadratic in tokens.
  blocked  flash attention in plain JAX: chunks of query rows against all keys with an
           exact softmax normalised after PV, a hand-written backward that recomputes
           only the logits from the saved softmax statistics, bf16 operands under the
           'bfloat16' matmul policy; key masks; one chunk runs without a loop; memory
           linear in tokens.
  xla      ``jax.nn.dot_product_attention(implementation='xla')``.
  cudnn    the same with cuDNN's fused flash attention: NVIDIA GPUs, bf16/fp16 only.
  flash    the Pallas TPU flash-attention kernel: TPUs, no key masks, lengths that are
           multiples of 128.

``check(name, platform, dtype)`` runs when a config is validated, so a backend that
cannot run on this platform or dtype is an error naming it, before anything compiles.
A call that a backend does not cover (a key mask under 'flash', a length 'blocked'
cannot chunk) is computed by ``einsum`` and logged once per backend and reason, by
name; the fallback is never silent.

``model.attention_layout='factorised'`` (``group``/``ungroup``) runs a block's
self-attention within frames or across them with any backend.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from video_dit.models import layers
from video_dit.models.rope import apply_rope
from video_dit.sharding import constrain


def einsum_attention(q_bqhd, k_bkhd, v_bkhd, mask_bk=None):
  """Reference attention in XLA; ``mask_bk`` marks the keys that may be attended to."""
  scale = 1.0 / math.sqrt(q_bqhd.shape[-1])  # on q: L*Dh multiplies instead of L*L
  logits = jnp.einsum("bqhd,bkhd->bhqk", q_bqhd * jnp.asarray(scale, q_bqhd.dtype), k_bkhd,
                      preferred_element_type=jnp.float32)
  if mask_bk is not None:
    logits = jnp.where(mask_bk[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v_bkhd.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v_bkhd)


def _dot_product_attention(impl):
  def fn(q_bqhd, k_bkhd, v_bkhd, mask_bk=None):
    mask = None if mask_bk is None else mask_bk[:, None, None, :]
    return jax.nn.dot_product_attention(q_bqhd, k_bkhd, v_bkhd, mask=mask, implementation=impl)
  return fn


BLOCK = 512  # query rows per chunk; measured best on CPU at 4096 tokens
MAX_CHUNK = 1 << 21  # (query rows x keys) per chunk and head: ~8 MB of f32 logits


def _chunk(lq: int, lk: int) -> int:
  """Query rows per chunk: BLOCK, fewer for long keys so a chunk's logits stay bounded
  (memory linear in tokens); 0 when no power-of-two chunk >= 64 divides ``lq``."""
  block = BLOCK
  while block > 64 and block * lk > MAX_CHUNK:
    block //= 2
  block = min(block, lq)
  while block >= 64 and lq % block:
    block //= 2
  return block if block >= 64 or block == lq else 0


def _logits_bias(mask_bk):
  """(B, Lk) key mask -> (B, 1, 1, Lk) float32 bias: 0 where allowed, a large negative
  number where not (exp underflows to 0; a row with no allowed key stays finite)."""
  return jnp.where(mask_bk, 0.0, jnp.finfo(jnp.float32).min / 2)[:, None, None, :]


def _probs(q, k, bias, mm):
  """Unnormalised probabilities exp(s - max) and the softmax statistics of one chunk."""
  s = jnp.einsum("bhqd,bhkd->bhqk", q.astype(mm), k, preferred_element_type=jnp.float32)
  s = s + bias
  m = s.max(-1, keepdims=True)
  p = jnp.exp(s - m)
  return p, m, p.sum(-1, keepdims=True)


def _chunked_forward(q, k, v, bias, block, mm):
  """q (pre-scaled), k, v: (B, H, L, D); bias (B, 1, 1, Lk). Each chunk of ``block``
  query rows against all keys with an exact softmax, normalised after the PV product
  (L*D divides, not L*L); returns the output and the softmax statistics per query row:
  (max logit, log of the sum), kept apart so that log(sum) survives next to a masked
  row's huge negative max."""
  kc, vc = k.astype(mm), v.astype(mm)

  def one(q_chunk):
    p, m, l = _probs(q_chunk, kc, bias, mm)
    o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(mm), vc, preferred_element_type=jnp.float32)
    return o / l, (m[..., 0], jnp.log(l)[..., 0])

  if block == q.shape[2]:  # one chunk: no loop (XLA:CPU runs a 1-trip map as a loop)
    return one(q)
  o, stats = jax.lax.map(one, _chunks(q, block))
  return _unchunk(o), tuple(_unchunk(x) for x in stats)


def _chunks(x, block):  # (B, H, L, ...) -> (L/block, B, H, block, ...)
  b, h, l = x.shape[:3]
  return jnp.moveaxis(x.reshape(b, h, l // block, block, *x.shape[3:]), 2, 0)


def _unchunk(x):  # the inverse of _chunks
  n, b, h, block = x.shape[:4]
  return jnp.moveaxis(x, 0, 2).reshape(b, h, n * block, *x.shape[4:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_attention(q, k, v, bias, block, mm):
  return _chunked_forward(q, k, v, bias, block, mm)[0]


def _chunked_attention_fwd(q, k, v, bias, block, mm):
  o, stats = _chunked_forward(q, k, v, bias, block, mm)
  return o, (q, k, v, bias, o, stats)


def _chunked_attention_bwd(block, mm, res, do):
  """The flash-attention backward, one chunk of query rows at a time: probabilities are
  recomputed from the saved statistics. Every product is computed transposed (keys
  on rows) so that each matmul reads row-major operands (XLA:CPU's fast path)."""
  q, k, v, bias, o, stats = res
  b, h, lq, d = q.shape
  delta = (do * o).sum(-1)  # (B, H, Lq)
  kc, vc = k.astype(mm), v.astype(mm)
  k_t = jnp.swapaxes(k, -1, -2).astype(mm)  # (B, H, D, Lk)
  bias_t = jnp.swapaxes(bias, -1, -2)  # (B, 1, Lk, 1)

  def step(carry, xs):
    dk, dv = carry
    q_c, do_c, m_c, log_l_c, delta_c = xs
    q_c, do_c = q_c.astype(mm), do_c.astype(mm)
    p_t = jnp.exp(jnp.einsum("bhkd,bhqd->bhkq", kc, q_c, preferred_element_type=jnp.float32)
                  + bias_t - m_c[:, :, None, :] - log_l_c[:, :, None, :])
    dv = dv + jnp.einsum("bhkq,bhqd->bhkd", p_t.astype(mm), do_c,
                         preferred_element_type=jnp.float32)
    dp_t = jnp.einsum("bhkd,bhqd->bhkq", vc, do_c, preferred_element_type=jnp.float32)
    # A masked logit is a constant: no gradient (also for a row with no allowed key).
    ds_t = jnp.where(bias_t == 0, p_t * (dp_t - delta_c[:, :, None, :]), 0.0).astype(mm)
    dk = dk + jnp.einsum("bhkq,bhqd->bhkd", ds_t, q_c, preferred_element_type=jnp.float32)
    dq_t = jnp.einsum("bhdk,bhkq->bhdq", k_t, ds_t, preferred_element_type=jnp.float32)
    return (dk, dv), dq_t

  zeros_kv = jnp.zeros(k.shape, jnp.float32)
  if block == lq:  # one chunk: no loop
    (dk, dv), dq_t = step((zeros_kv, zeros_kv), (q, do, *stats, delta))
    dq = dq_t.swapaxes(-1, -2)
  else:
    (dk, dv), dq_t = jax.lax.scan(
        step, (zeros_kv, zeros_kv), tuple(_chunks(x, block) for x in (q, do, *stats, delta)))
    dq = jnp.moveaxis(dq_t, 0, 3).reshape(b, h, d, lq).swapaxes(-1, -2)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), jnp.zeros_like(bias)


_chunked_attention.defvjp(_chunked_attention_fwd, _chunked_attention_bwd)


def blocked_attention(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, block: int = 0):
  """Attention in chunks of query rows with a hand-written flash-attention backward: no
  (L, L) array is kept for the backward and nothing is recomputed but the logits. A
  sequence that fits one chunk runs without a loop. ``mask_bk`` marks allowed keys.

  Under ``matmul_policy('bfloat16')`` the four products take bfloat16 operands with
  float32 accumulation (softmax statistics stay float32), as cudnn's bf16 path does.
  """
  lq, d = q_bqhd.shape[1], q_bqhd.shape[-1]
  block = block or _chunk(lq, k_bkhd.shape[1])
  if not block or lq % block:
    raise ValueError(f"blocked attention needs query chunks dividing {lq} tokens (got {block})")
  mm = (jnp.bfloat16 if layers.matmul_dtype() == "bfloat16"
        else jnp.promote_types(q_bqhd.dtype, jnp.float32))
  b, lk = k_bkhd.shape[:2]
  bias = (jnp.zeros((b, 1, 1, lk), jnp.float32) if mask_bk is None
          else _logits_bias(mask_bk))
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)
  o = _chunked_attention(heads_first(q_bqhd * jnp.asarray(1.0 / math.sqrt(d), q_bqhd.dtype)),
                         heads_first(k_bkhd), heads_first(v_bkhd), bias, block, mm)
  return heads_first(o.astype(v_bkhd.dtype))


def _pallas_flash(q_bqhd, k_bkhd, v_bkhd):
  from jax.experimental.pallas.ops.tpu import flash_attention  # pylint: disable=g-import-not-at-top
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # the kernel takes (B, H, L, Dh)
  o = flash_attention.flash_attention(heads_first(q_bqhd), heads_first(k_bkhd),
                                      heads_first(v_bkhd),
                                      sm_scale=1.0 / math.sqrt(q_bqhd.shape[-1]))
  return heads_first(o)


_HEADS = ("act_batch", "act_len", "act_heads", None)
LAYOUTS = ("full", "factorised")


def group(x_blhd, layout: str, grid):
  """(B, T'H'W', H, Dh) in token order -> the attention groups of a factorised block:
  'spatial' (B*T', H'W', ...): each frame's tokens; 'temporal' (B*H'W', T', ...): each
  position's tokens across frames."""
  b, rest = x_blhd.shape[0], x_blhd.shape[2:]
  gt, gh, gw = grid
  if layout == "spatial":
    return x_blhd.reshape(b * gt, gh * gw, *rest)
  x = x_blhd.reshape(b, gt, gh * gw, *rest).swapaxes(1, 2)
  return x.reshape(b * gh * gw, gt, *rest)


def ungroup(x_glhd, layout: str, grid):
  """The inverse of ``group``."""
  gt, gh, gw = grid
  rest = x_glhd.shape[2:]
  if layout == "spatial":
    return x_glhd.reshape(-1, gt * gh * gw, *rest)
  x = x_glhd.reshape(-1, gh * gw, gt, *rest).swapaxes(1, 2)
  return x.reshape(-1, gt * gh * gw, *rest)


class SelfAttention(nn.Module):
  """Fused-qkv multi-head self-attention with optional RoPE angles (L, head_dim/2).

  ``extra_kv`` (keys, values of other tokens, e.g. cached reference tokens) are attended
  to as well, where ``extra_mask_bk`` allows; ``return_kv`` also returns this call's own
  (keys, values), RoPE applied, for another sequence to attend to, and ``kv_only``
  returns just those (no attention computed). ``groups`` = (layout, grid): attention
  within each frame ('spatial') or across frames at each position ('temporal').
  """
  num_heads: int
  dtype: Any = jnp.float32
  impl: str = "einsum"
  embed_axis: str = "embed"

  @nn.compact
  def __call__(self, x_bld, rope_angles=None, mask_bl=None, extra_kv=None, extra_mask_bk=None,
               return_kv=False, kv_only=False, groups=None):
    d = x_bld.shape[-1]
    head_dim = d // self.num_heads
    qkv = layers.dense((3, self.num_heads, head_dim),
                       (self.embed_axis, None, "heads", "head_dim"), self.dtype,
                       name="qkv")(x_bld)  # (B, L, 3, H, Dh)
    q, k, v = (constrain(qkv[:, :, i], _HEADS) for i in range(3))
    if rope_angles is not None:
      q, k = apply_rope(q, rope_angles), apply_rope(k, rope_angles)
    own_kv = (k, v)
    if kv_only:
      return own_kv
    if extra_kv is not None:
      ek, ev = extra_kv
      if mask_bl is not None or extra_mask_bk is not None:
        b, l, le = x_bld.shape[0], k.shape[1], ek.shape[1]
        mask_bl = jnp.concatenate(
            [jnp.ones((b, l), bool) if mask_bl is None else mask_bl,
             jnp.ones((b, le), bool) if extra_mask_bk is None else extra_mask_bk], axis=1)
      k = jnp.concatenate([k, ek.astype(k.dtype)], axis=1)
      v = jnp.concatenate([v, ev.astype(v.dtype)], axis=1)
    if groups is not None:  # factorised: within frames or across them (RoPE already 3D)
      if extra_kv is not None or mask_bl is not None:
        raise ValueError("factorised attention takes no extra keys or masks")
      q, k, v = (group(x, *groups) for x in (q, k, v))
      o = constrain(ungroup(attention(q, k, v, None, self.impl), *groups), _HEADS)
    else:
      o = constrain(attention(q, k, v, mask_bl, self.impl), _HEADS)
    out = layers.dense(d, ("heads", "head_dim", self.embed_axis), self.dtype, axis=(-2, -1),
                       name="out")(o)
    return (out, own_kv) if return_kv else out


class CrossAttention(nn.Module):
  """Queries from x, keys/values from a context sequence.

  With ``extra`` (the decoupled, IP-Adapter-style identity mode) the same
  queries also attend to a second context through their own k/v projections
  (``extra_kv``); the two results are summed, the second times ``extra_scale``
  and, if ``extra_gate``, a zero-initialised (heads, head_dim) gate.
  """
  num_heads: int
  dtype: Any = jnp.float32
  impl: str = "einsum"
  embed_axis: str = "embed"
  zero_out: bool = False      # zero-init output projection: a fresh layer adds nothing
  extra_gate: bool = False

  @nn.compact
  def __call__(self, x_bld, ctx_bkd, ctx_mask_bk=None, extra_bmd=None, extra_scale=1.0):
    d = x_bld.shape[-1]
    head_dim = d // self.num_heads
    heads = (self.num_heads, head_dim)
    q = constrain(layers.dense(heads, (self.embed_axis, "heads", "head_dim"), self.dtype,
                        name="q")(x_bld), _HEADS)
    kv = layers.dense((2,) + heads, (self.embed_axis, None, "heads", "head_dim"), self.dtype,
               name="kv")(ctx_bkd)
    o = attention(q, kv[:, :, 0], kv[:, :, 1], ctx_mask_bk, self.impl)
    if extra_bmd is not None:
      ekv = layers.dense((2,) + heads, (self.embed_axis, None, "heads", "head_dim"), self.dtype,
                  name="extra_kv")(extra_bmd)
      eo = attention(q, ekv[:, :, 0], ekv[:, :, 1], None, self.impl)
      if self.extra_gate:
        gate = layers.logical(layers.zeros, "heads", "head_dim")
        eo = eo * self.param("extra_gate", gate, heads)
      o = o + extra_scale * eo
    o = constrain(o, _HEADS)
    return layers.dense(d, ("heads", "head_dim", self.embed_axis), self.dtype, axis=(-2, -1),
                 init=layers.zeros if self.zero_out else layers.xavier, name="out")(o)


class EncoderLayer(nn.Module):
  """Pre-LN transformer layer: self-attention (optional key mask) and MLP."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  impl: str = "einsum"
  embed_axis: str = "embed"

  @nn.compact
  def __call__(self, x_bld, mask_bl=None, rope_angles=None):
    d = x_bld.shape[-1]
    h = layers.layer_norm(self.dtype, axis_name=self.embed_axis, name="norm1")(x_bld)
    x_bld = x_bld + SelfAttention(self.num_heads, self.dtype, self.impl, self.embed_axis,
                                  name="attn")(h, rope_angles, mask_bl)
    h = layers.layer_norm(self.dtype, axis_name=self.embed_axis, name="norm2")(x_bld)
    return x_bld + layers.Mlp(int(d * self.mlp_ratio), dtype=self.dtype,
                       embed_axis=self.embed_axis, name="mlp")(h)


# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Backend:
  """An attention implementation and what it can run."""
  fn: Callable                             # (q, k, v, mask_bk or None) -> o
  what: str = ""
  platforms: tuple[str, ...] = ()          # jax.default_backend() values; () = any
  dtypes: tuple[str, ...] = ()             # compute dtypes; () = any
  cannot: Callable = lambda q, k, mask: None   # a call it does not cover -> the reason


def _blocked_cannot(q, k, mask):
  if not _chunk(q.shape[1], k.shape[1]):
    return f"no power-of-two chunk >= 64 divides {q.shape[1]} query rows"
  return None


def _flash_cannot(q, k, mask):
  if mask is not None:
    return "it takes no key masks"
  if q.shape[1] % 128 or k.shape[1] % 128:
    return f"lengths {q.shape[1]} x {k.shape[1]} are not multiples of 128"
  return None


BACKENDS: dict[str, Backend] = {
    "einsum": Backend(einsum_attention, "XLA einsums"),
    "blocked": Backend(blocked_attention,
                       "flash attention in plain JAX", cannot=_blocked_cannot),
    "xla": Backend(_dot_product_attention("xla"), "jax.nn.dot_product_attention"),
    "cudnn": Backend(_dot_product_attention("cudnn"), "cuDNN fused attention",
                     platforms=("gpu", "cuda"), dtypes=("bfloat16", "float16")),
    "flash": Backend(lambda q, k, v, mask: _pallas_flash(q, k, v), "the Pallas TPU kernel",
                     platforms=("tpu",), cannot=_flash_cannot),
}
ATTENTION_IMPLS = tuple(BACKENDS)
_PLATFORM_HINT = {"cpu": "'einsum' or 'blocked'", "gpu": "'cudnn' (bf16) or 'xla'",
                  "tpu": "'flash' or 'einsum'"}


def check(name: str, platform: str, dtype: str) -> None:
  """Raises, naming the backend and the fix, when it cannot run on ``platform`` with
  compute ``dtype``."""
  if name not in BACKENDS:
    raise ValueError(f"model.attention={name!r} is not one of {ATTENTION_IMPLS}.")
  b = BACKENDS[name]
  if b.dtypes and dtype not in b.dtypes:
    raise ValueError(f"model.attention={name!r} ({b.what}) needs model.dtype="
                     f"{b.dtypes[0]!r} (or {', '.join(map(repr, b.dtypes[1:]))}), not "
                     f"{dtype!r}; set it, or use attention='einsum' or 'xla'.")
  if b.platforms and platform not in b.platforms:
    raise ValueError(f"model.attention={name!r} ({b.what}) runs on {'/'.join(b.platforms)} "
                     f"only; this backend is {platform}: use "
                     f"{_PLATFORM_HINT.get(platform, 'einsum')}.")


@functools.lru_cache(maxsize=None)
def _log_fallback(name: str, reason: str) -> None:
  logging.warning("attention %r cannot run some calls (%s); those calls use 'einsum'.",
                  name, reason)


def attention(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, impl: str = "einsum"):
  """Multi-head attention with the named backend; ``mask_bk`` marks the keys that may
  be attended to. A call the backend does not cover runs ``einsum`` (logged once)."""
  backend = BACKENDS.get(impl)
  if backend is None:
    raise ValueError(f"attention implementation {impl!r} is unknown; use one of "
                     f"{ATTENTION_IMPLS}.")
  reason = backend.cannot(q_bqhd, k_bkhd, mask_bk)
  if reason:
    _log_fallback(impl, reason)
    backend = BACKENDS["einsum"]
  with jax.named_scope("attention_core"):  # the profile's "attention" category
    return backend.fn(q_bqhd, k_bkhd, v_bkhd, mask_bk)
