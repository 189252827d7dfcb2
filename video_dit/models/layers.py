"""Building blocks shared by the DiT, the text encoder, the identity encoder and the VAE:
dense layers, norms, modulation, the MLP, the timestep embedder, and the matmul
precision policy. Attention (its backends and modules) is in ``attention.py``.

Every parameter carries logical axis names (``nn.with_logical_partitioning``);
``video_dit.sharding`` maps them to the mesh. Parameters are float32; ``dtype``
is the compute dtype.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from video_dit.models.rope import sincos_1d
from video_dit.sharding import constrain

Dtype = Any

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros_init()


# ----------------------------------------------------------------------------- matmuls

# The matmul-precision policy (``model.matmul_dtype``). Parameters stay float32 and
# activations stay in the compute dtype (``model.dtype``); the policy only decides what
# the matmuls read:
#   '' / 'float32'  the compute dtype (XLA's default dot).
#   'bfloat16'      bfloat16 operands with float32 accumulation and float32 output,
#                   forward and backward (``bf16_matmul``), in every ``dense`` layer and
#                   in the four products of blocked attention. On CPUs with fast bf16
#                   dot kernels this is the fast path; measure per machine.
#   'auto'          decided once per process by ``resolve_matmul_dtype``: GPU/TPU
#                   'bfloat16'; CPU a quick probe, 'bfloat16' only where its matmul is
#                   clearly faster (an AMD EPYC here: 2x; an AVX-512 Xeon: 0.5x). The
#                   choice depends on the machine, so results do too: pin the dtype to
#                   reproduce a run bit for bit elsewhere.
# The VideoDiT sets it around its forward pass (``matmul_policy``); layers read it when
# they are built, so a model traced inside the context uses it throughout.
MATMUL_DTYPES = ("", "float32", "bfloat16", "auto")
AUTO_BF16_SPEEDUP = 1.2  # 'auto' takes bf16 only when it is at least this much faster
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


def probe_matmul_speeds(n: int = 1024, repeats: int = 5,
                        dtypes=("float32", "bfloat16")) -> dict[str, float]:
  """TFLOP/s of an n^3 matmul on the default device per operand dtype (float32
  accumulation and output), timed alternately; the best of ``repeats`` each."""
  import time  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  operands = {dt: (a.astype(dt), b.astype(dt)) for dt in dtypes}  # cast outside the timing
  best = dict.fromkeys(dtypes, float("inf"))
  for x, y in operands.values():
    jax.block_until_ready(dot(x, y))
  for _ in range(repeats):
    for dt, (x, y) in operands.items():
      t0 = time.perf_counter()
      jax.block_until_ready(dot(x, y))
      best[dt] = min(best[dt], time.perf_counter() - t0)
  return {dt: 2 * n ** 3 / t / 1e12 for dt, t in best.items()}


_RESOLVED: dict[str, str] = {}


def resolve_matmul_dtype(value: str) -> str:
  """``value`` itself, or for 'auto' this process's choice (made once, then cached;
  every process of a multi-process run takes process 0's)."""
  if value != "auto":
    return value
  if "auto" not in _RESOLVED:
    if jax.default_backend() != "cpu":
      choice = "bfloat16"
    else:
      speeds = probe_matmul_speeds()
      fast = speeds["bfloat16"] >= AUTO_BF16_SPEEDUP * speeds["float32"]
      choice = "bfloat16" if fast else "float32"
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        fast = bool(multihost_utils.broadcast_one_to_all(jnp.asarray(fast)))
        choice = "bfloat16" if fast else "float32"
      from absl import logging  # pylint: disable=g-import-not-at-top
      logging.info("model.matmul_dtype='auto' -> %s (matmul TFLOP/s: float32 %.3f, "
                   "bfloat16 %.3f)", choice, speeds["float32"], speeds["bfloat16"])
    _RESOLVED["auto"] = choice
  return _RESOLVED["auto"]


def matmul_dtype() -> str:
  """The policy in effect: '' (the compute dtype), 'float32' or 'bfloat16'."""
  return _MATMUL.get()


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
  dot = bf16_dot_general if matmul_dtype() == "bfloat16" else None
  return nn.DenseGeneral(features, axis=axis, dtype=dtype, use_bias=use_bias, dot_general=dot,
                         kernel_init=logical(init, *names),
                         bias_init=logical(zeros, *names[-n_out:]), name=name)


def layer_norm(dtype, affine=True, axis_name="embed", name=None):
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, use_scale=affine, use_bias=affine,
                      scale_init=logical(nn.initializers.ones_init(), axis_name),
                      bias_init=logical(zeros, axis_name), name=name)


def modulate(x_bld, shift, scale):
  """adaLN: shift and scale (B, D), or per token (B, 1 or L, D)."""
  if shift.ndim == 2:
    shift, scale = shift[:, None], scale[:, None]
  with jax.named_scope("modulate"):
    return x_bld * (1 + scale) + shift


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


class ScalarEmbedder(nn.Module):
  """Scalars (B, K) -> (B, width), exactly zero at ``neutral`` for any parameters:
  h(v) - h(neutral), with h = sinusoidal features of ``scale`` * v per scalar -> MLP
  whose output layer starts at zero. A model gains such an input (guidance scales, a
  step size) as a no-op: at the neutral value it is the model it was."""
  width: int
  neutral: tuple[float, ...]
  scale: float = 100.0
  freq_dim: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, v_bk):
    v = jnp.concatenate([v_bk.astype(jnp.float32),
                         jnp.asarray(self.neutral, jnp.float32)[None]], 0)  # (B + 1, K)
    feats = jnp.concatenate([sincos_1d(self.scale * v[:, k], self.freq_dim)
                             for k in range(v.shape[1])], -1)
    init = logical(nn.initializers.normal(0.02), None, "embed")
    h = nn.silu(nn.Dense(self.width, dtype=self.dtype, kernel_init=init,
                         bias_init=logical(zeros, "embed"), name="fc1")(feats))
    h = dense(self.width, ("mlp", "embed"), self.dtype, init=zeros, name="fc2")(h)
    return h[:-1] - h[-1:]
