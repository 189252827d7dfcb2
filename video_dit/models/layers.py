"""Building blocks shared by the DiT, the text encoder and the identity encoder.

Every parameter carries logical axis names (``nn.with_logical_partitioning``);
``video_dit.sharding`` maps them to the mesh. Parameters are float32; ``dtype``
is the compute dtype.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from video_dit.models.rope import apply_rope, sincos_1d
from video_dit.sharding import constrain

Dtype = Any
ATTENTION_IMPLS = ("einsum", "blocked", "xla", "cudnn", "flash")

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros_init()


# ----------------------------------------------------------------------------- matmuls

MATMUL_DTYPES = ("", "float32", "bfloat16")
_MATMUL = contextvars.ContextVar("video_dit_matmul_dtype", default="")


@contextlib.contextmanager
def matmul_policy(matmul_dtype: str):
  """Dense layers built inside use ``matmul_dtype`` inputs with float32 accumulation
  ('' or 'float32': the layer's own compute dtype)."""
  token = _MATMUL.set(matmul_dtype)
  try:
    yield
  finally:
    _MATMUL.reset(token)


def _transposed(x_mk):
  """x.T as a physically transposed array (XLA:CPU's fast low-precision matmul needs
  row-major operands; a plain transpose only becomes a layout change)."""
  h = x_mk.shape[1] // 2
  return jnp.concatenate([x_mk[:, :h].T, x_mk[:, h:].T], axis=0) if h else x_mk.T


@jax.custom_vjp
def bf16_matmul(a_mk, b_kn):
  """(M, K) @ (K, N) with bfloat16 inputs and float32 accumulation and output, forward
  and backward (the cotangent is rounded to bfloat16 too, as in mixed-precision training)."""
  return jnp.dot(a_mk.astype(jnp.bfloat16), b_kn.astype(jnp.bfloat16),
                 preferred_element_type=jnp.float32)


def _bf16_matmul_fwd(a_mk, b_kn):
  a, b = a_mk.astype(jnp.bfloat16), b_kn.astype(jnp.bfloat16)
  return jnp.dot(a, b, preferred_element_type=jnp.float32), (_transposed(a), b)


def _bf16_matmul_bwd(res, g_mn):
  a_km, b_kn = res
  g = g_mn.astype(jnp.bfloat16)
  da = jax.lax.dot_general(g, b_kn, (((1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32)  # g @ b.T, no transpose
  return da, jnp.dot(a_km, g, preferred_element_type=jnp.float32)


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def bf16_dot_general(lhs, rhs, dimension_numbers, precision=None,
                     preferred_element_type=None):
  """``lax.dot_general`` for dense layers: bfloat16 inputs, float32 accumulation."""
  del precision, preferred_element_type
  (lc, rc), (lb, rb) = dimension_numbers
  n = len(lc)
  if (lb or rb or tuple(lc) != tuple(range(lhs.ndim - n, lhs.ndim))
      or tuple(rc) != tuple(range(n))):
    return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16),
                               dimension_numbers, preferred_element_type=jnp.float32)
  k = math.prod(lhs.shape[lhs.ndim - n:])
  out = bf16_matmul(lhs.reshape(-1, k), rhs.reshape(k, -1))
  return out.reshape(lhs.shape[:lhs.ndim - n] + rhs.shape[n:])


def logical(init: Callable, *names) -> Callable:
  return nn.with_logical_partitioning(init, names)


def dense(features, names, dtype, init=xavier, axis=-1, name=None, use_bias=True):
  """DenseGeneral whose kernel is annotated ``names`` and bias the output names."""
  n_out = 1 if isinstance(features, int) else len(features)
  dot = bf16_dot_general if _MATMUL.get() == "bfloat16" else None
  return nn.DenseGeneral(features, axis=axis, dtype=dtype, use_bias=use_bias, dot_general=dot,
                         kernel_init=logical(init, *names),
                         bias_init=logical(zeros, *names[-n_out:]), name=name)


def layer_norm(dtype, affine=True, axis_name="embed", name=None):
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, use_scale=affine, use_bias=affine,
                      scale_init=logical(nn.initializers.ones_init(), axis_name),
                      bias_init=logical(zeros, axis_name), name=name)


def modulate(x_bld, shift_bd, scale_bd):
  return x_bld * (1 + scale_bd[:, None]) + shift_bd[:, None]


def attention(q_bqhd, k_bkhd, v_bkhd, mask_bk=None, impl: str = "einsum"):
  """Multi-head attention; ``mask_bk`` marks the keys that may be attended to.

  ``einsum`` is plain XLA (fastest on CPU, softmax in float32); ``xla`` and
  ``cudnn`` go through ``jax.nn.dot_product_attention`` (cudnn: fused flash
  attention on NVIDIA GPUs, bf16/fp16 only); ``flash`` is the Pallas TPU flash
  attention kernel for unmasked attention over key lengths that are multiples
  of 128 (the DiT's self-attention); ``blocked`` is flash attention in plain JAX
  (``blocked_attention``: chunks of query rows, a hand-written backward, memory
  linear in tokens; 7x faster than ``einsum`` at 4096 tokens on CPU). Calls they
  do not cover (masks, lengths with no chunk dividing them) fall back to ``einsum``.
  """
  if impl == "blocked":
    if mask_bk is None and _chunk(q_bqhd.shape[1], k_bkhd.shape[1]):
      return blocked_attention(q_bqhd, k_bkhd, v_bkhd)
    impl = "einsum"
  if impl == "flash":
    if mask_bk is None and k_bkhd.shape[1] % 128 == 0 and q_bqhd.shape[1] % 128 == 0:
      return _pallas_flash(q_bqhd, k_bkhd, v_bkhd)
    impl = "einsum"
  if impl == "einsum":
    scale = 1.0 / math.sqrt(q_bqhd.shape[-1])  # on q: L*Dh multiplies instead of L*L
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_bqhd * jnp.asarray(scale, q_bqhd.dtype), k_bkhd,
                        preferred_element_type=jnp.float32)
    if mask_bk is not None:
      logits = jnp.where(mask_bk[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v_bkhd.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v_bkhd)
  if impl in ("xla", "cudnn"):
    mask = None if mask_bk is None else mask_bk[:, None, None, :]
    return jax.nn.dot_product_attention(q_bqhd, k_bkhd, v_bkhd, mask=mask,
                                        implementation=impl)
  raise ValueError(f"attention implementation '{impl}' is unknown; use one of "
                   f"{ATTENTION_IMPLS}.")


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


def _chunked_forward(q, k, v, block, mm):
  """q (pre-scaled), k, v: (B, H, L, D). Each chunk of ``block`` query rows against all
  keys with an exact softmax; returns the output and the log-sum-exp per query row."""
  b, h, lq, d = q.shape
  kc, vc = k.astype(mm), v.astype(mm)

  def one(q_chunk):
    s = jnp.einsum("bhqd,bhkd->bhqk", q_chunk.astype(mm), kc, preferred_element_type=jnp.float32)
    m = s.max(-1, keepdims=True)
    p = jnp.exp(s - m)
    l = p.sum(-1, keepdims=True)
    o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(mm), vc, preferred_element_type=jnp.float32)
    return o / l, (m + jnp.log(l))[..., 0]

  o, lse = jax.lax.map(one, _chunks(q, block))
  return _unchunk(o), _unchunk(lse)


def _chunks(x, block):  # (B, H, L, ...) -> (L/block, B, H, block, ...)
  b, h, l = x.shape[:3]
  return jnp.moveaxis(x.reshape(b, h, l // block, block, *x.shape[3:]), 2, 0)


def _unchunk(x):  # the inverse of _chunks
  n, b, h, block = x.shape[:4]
  return jnp.moveaxis(x, 0, 2).reshape(b, h, n * block, *x.shape[4:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_attention(q, k, v, block, mm):
  return _chunked_forward(q, k, v, block, mm)[0]


def _chunked_attention_fwd(q, k, v, block, mm):
  o, lse = _chunked_forward(q, k, v, block, mm)
  return o, (q, k, v, o, lse)


def _chunked_attention_bwd(block, mm, res, do):
  """The flash-attention backward, one chunk of query rows at a time: probabilities are
  recomputed from the saved log-sum-exp. Every product is computed transposed (keys
  on rows) so that each matmul reads row-major operands (XLA:CPU's fast path)."""
  q, k, v, o, lse = res
  b, h, lq, d = q.shape
  delta = (do * o).sum(-1)  # (B, H, Lq): rowsum(dP * P) = rowsum(dO * O)
  kc, vc = k.astype(mm), v.astype(mm)
  k_t = jnp.swapaxes(k, -1, -2).astype(mm)  # (B, H, D, Lk)

  def step(carry, xs):
    dk, dv = carry
    q_c, do_c, lse_c, delta_c = xs
    q_c, do_c = q_c.astype(mm), do_c.astype(mm)
    p_t = jnp.exp(jnp.einsum("bhkd,bhqd->bhkq", kc, q_c, preferred_element_type=jnp.float32)
                  - lse_c[:, :, None, :])
    dv = dv + jnp.einsum("bhkq,bhqd->bhkd", p_t.astype(mm), do_c,
                         preferred_element_type=jnp.float32)
    dp_t = jnp.einsum("bhkd,bhqd->bhkq", vc, do_c, preferred_element_type=jnp.float32)
    ds_t = (p_t * (dp_t - delta_c[:, :, None, :])).astype(mm)
    dk = dk + jnp.einsum("bhkq,bhqd->bhkd", ds_t, q_c, preferred_element_type=jnp.float32)
    dq_t = jnp.einsum("bhdk,bhkq->bhdq", k_t, ds_t, preferred_element_type=jnp.float32)
    return (dk, dv), dq_t

  zeros_kv = jnp.zeros(k.shape, jnp.float32)
  (dk, dv), dq_t = jax.lax.scan(
      step, (zeros_kv, zeros_kv), tuple(_chunks(x, block) for x in (q, do, lse, delta)))
  dq = jnp.moveaxis(dq_t, 0, 3).reshape(b, h, d, lq).swapaxes(-1, -2)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_chunked_attention.defvjp(_chunked_attention_fwd, _chunked_attention_bwd)


def blocked_attention(q_bqhd, k_bkhd, v_bkhd, block: int = 0):
  """Unmasked attention in chunks of query rows with a hand-written flash-attention
  backward: no (L, L) array ever exists and nothing is recomputed but the logits.

  Under ``matmul_policy('bfloat16')`` the four products take bfloat16 operands with
  float32 accumulation (softmax statistics stay float32), as cudnn's bf16 path does.
  """
  lq, d = q_bqhd.shape[1], q_bqhd.shape[-1]
  block = block or _chunk(lq, k_bkhd.shape[1])
  if not block or lq % block:
    raise ValueError(f"blocked attention needs query chunks dividing {lq} tokens (got {block})")
  mm = jnp.bfloat16 if _MATMUL.get() == "bfloat16" else jnp.promote_types(q_bqhd.dtype, jnp.float32)
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)
  o = _chunked_attention(heads_first(q_bqhd * jnp.asarray(1.0 / math.sqrt(d), q_bqhd.dtype)),
                         heads_first(k_bkhd), heads_first(v_bkhd), block, mm)
  return heads_first(o.astype(v_bkhd.dtype))


def _pallas_flash(q_bqhd, k_bkhd, v_bkhd):
  from jax.experimental.pallas.ops.tpu import flash_attention  # pylint: disable=g-import-not-at-top
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # the kernel takes (B, H, L, Dh)
  o = flash_attention.flash_attention(heads_first(q_bqhd), heads_first(k_bkhd),
                                      heads_first(v_bkhd),
                                      sm_scale=1.0 / math.sqrt(q_bqhd.shape[-1]))
  return heads_first(o)


_HEADS = ("act_batch", "act_len", "act_heads", None)


class SelfAttention(nn.Module):
  """Fused-qkv multi-head self-attention with optional RoPE angles (L, head_dim/2)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  impl: str = "einsum"
  embed_axis: str = "embed"

  @nn.compact
  def __call__(self, x_bld, rope_angles=None, mask_bl=None):
    d = x_bld.shape[-1]
    head_dim = d // self.num_heads
    qkv = dense((3, self.num_heads, head_dim), (self.embed_axis, None, "heads", "head_dim"),
                self.dtype, name="qkv")(x_bld)  # (B, L, 3, H, Dh)
    q, k, v = (constrain(qkv[:, :, i], _HEADS) for i in range(3))
    if rope_angles is not None:
      q, k = apply_rope(q, rope_angles), apply_rope(k, rope_angles)
    o = constrain(attention(q, k, v, mask_bl, self.impl), _HEADS)
    return dense(d, ("heads", "head_dim", self.embed_axis), self.dtype, axis=(-2, -1),
                 name="out")(o)


class CrossAttention(nn.Module):
  """Queries from x, keys/values from a context sequence.

  With ``extra`` (the decoupled, IP-Adapter-style identity mode) the same
  queries also attend to a second context through their own k/v projections
  (``extra_kv``); the two results are summed, the second times ``extra_scale``
  and, if ``extra_gate``, a zero-initialised (heads, head_dim) gate.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  impl: str = "einsum"
  embed_axis: str = "embed"
  zero_out: bool = False      # zero-init output projection: a fresh layer adds nothing
  extra_gate: bool = False

  @nn.compact
  def __call__(self, x_bld, ctx_bkd, ctx_mask_bk=None, extra_bmd=None, extra_scale=1.0):
    d = x_bld.shape[-1]
    head_dim = d // self.num_heads
    heads = (self.num_heads, head_dim)
    q = constrain(dense(heads, (self.embed_axis, "heads", "head_dim"), self.dtype,
                        name="q")(x_bld), _HEADS)
    kv = dense((2,) + heads, (self.embed_axis, None, "heads", "head_dim"), self.dtype,
               name="kv")(ctx_bkd)
    o = attention(q, kv[:, :, 0], kv[:, :, 1], ctx_mask_bk, self.impl)
    if extra_bmd is not None:
      ekv = dense((2,) + heads, (self.embed_axis, None, "heads", "head_dim"), self.dtype,
                  name="extra_kv")(extra_bmd)
      eo = attention(q, ekv[:, :, 0], ekv[:, :, 1], None, self.impl)
      if self.extra_gate:
        eo = eo * self.param("extra_gate", logical(zeros, "heads", "head_dim"), heads)
      o = o + extra_scale * eo
    o = constrain(o, _HEADS)
    return dense(d, ("heads", "head_dim", self.embed_axis), self.dtype, axis=(-2, -1),
                 init=zeros if self.zero_out else xavier, name="out")(o)


class Mlp(nn.Module):
  """Dense -> GELU(tanh) -> Dense."""
  hidden: int
  out: int | None = None
  dtype: Dtype = jnp.float32
  embed_axis: str = "embed"
  out_axis: str | None = None

  @nn.compact
  def __call__(self, x):
    out = self.out or x.shape[-1]
    h = dense(self.hidden, (self.embed_axis, "mlp"), self.dtype, name="fc1")(x)
    h = nn.gelu(h, approximate=True)
    if h.ndim == 3:
      h = constrain(h, ("act_batch", "act_len", "act_mlp"))
    return dense(out, ("mlp", self.out_axis or self.embed_axis), self.dtype, name="fc2")(h)


class EncoderLayer(nn.Module):
  """Pre-LN transformer layer: self-attention (optional key mask) and MLP."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  impl: str = "einsum"
  embed_axis: str = "embed"

  @nn.compact
  def __call__(self, x_bld, mask_bl=None, rope_angles=None):
    d = x_bld.shape[-1]
    h = layer_norm(self.dtype, axis_name=self.embed_axis, name="norm1")(x_bld)
    x_bld = x_bld + SelfAttention(self.num_heads, self.dtype, self.impl, self.embed_axis,
                                  name="attn")(h, rope_angles, mask_bl)
    h = layer_norm(self.dtype, axis_name=self.embed_axis, name="norm2")(x_bld)
    return x_bld + Mlp(int(d * self.mlp_ratio), dtype=self.dtype,
                       embed_axis=self.embed_axis, name="mlp")(h)


class TimestepEmbedder(nn.Module):
  """t in [0, 1] -> sinusoidal features of 1000 t -> MLP, as DiT does for steps."""
  width: int
  freq_dim: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t_b):
    freqs = sincos_1d(1000.0 * t_b, self.freq_dim)  # (B, freq_dim)
    init = logical(nn.initializers.normal(0.02), None, "embed")
    h = nn.Dense(self.width, dtype=self.dtype, kernel_init=init,
                 bias_init=logical(zeros, "embed"), name="fc1")(freqs)
    h = nn.silu(h)
    return dense(self.width, ("mlp", "embed"), self.dtype,
                 init=nn.initializers.normal(0.02), name="fc2")(h)
