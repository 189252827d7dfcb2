"""Speed and memory of a config's train step and sampler, measured in one process.

Every result is one flat dict (``tools.benchmark`` prints them as JSON lines):

  step_s             median of the timed steps after a warm-up (compile_s separately)
  flops_per_step_xla XLA's cost analysis of the compiled program, summed over devices
                     (a scanned layer's body is counted once: see flops_per_step_analytic)
  flops_per_step_analytic  matmul FLOPs (``models.flops``), 3x forward for a train step
  tflops_per_s       analytic FLOPs / step_s
  peak_tflops_per_s  CPU: a large matmul measured here, in the model's dtype policy;
                     GPU/TPU: the device's datasheet dense bf16 peak, times devices
  mfu                tflops_per_s / peak_tflops_per_s
  mem_per_device_bytes  compiled memory analysis: arguments + outputs + temporaries
                     (minus donated aliases), and each part
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from video_dit import sharding, train
from video_dit.diffusion import Diffusion, SamplerConfig
from video_dit.evaluation import cost as cost_lib
from video_dit.models import flops as flops_lib
from video_dit.models import registry

# Dense bf16 TFLOP/s per chip from vendor datasheets (no sparsity).
DATASHEET_BF16_TFLOPS = {
    "H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0,
    "A100": 312.0, "A10G": 70.0, "L4": 121.0, "L40S": 362.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
    "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


def device_peak_tflops(device=None) -> float | None:
  """The datasheet bf16 peak of an accelerator, or None (CPU, unknown kind)."""
  device = device or jax.devices()[0]
  kind = device.device_kind
  for name, peak in sorted(DATASHEET_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      return peak
  return None


def matmul_peak_tflops(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
  """TFLOP/s of an n x n matmul on one device in the model's dtype policy
  (bfloat16/float16: low-precision inputs, float32 accumulation)."""
  dt = jnp.dtype(dtype)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times) / 1e12


def peak_tflops(config) -> tuple[float, str]:
  """(peak TFLOP/s of all devices, where it comes from)."""
  if jax.default_backend() == "cpu":
    # Fake CPU devices share the same cores: the machine's peak is one measured matmul.
    return matmul_peak_tflops(config.model.dtype), f"measured {config.model.dtype} matmul"
  peak = device_peak_tflops()
  if peak is None:
    return float("nan"), f"unknown device kind {jax.devices()[0].device_kind!r}"
  return peak * jax.device_count(), f"datasheet bf16 x {jax.device_count()} devices"


def memory(compiled) -> dict:
  """Per-device bytes from the compiled program's memory analysis."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):  # some backends have none
    m = None
  if m is None:
    return dict(mem_per_device_bytes=float("nan"))
  parts = dict(mem_arguments_bytes=int(m.argument_size_in_bytes),
               mem_outputs_bytes=int(m.output_size_in_bytes),
               mem_temporaries_bytes=int(m.temp_size_in_bytes),
               mem_aliased_bytes=int(m.alias_size_in_bytes))
  total = (parts["mem_arguments_bytes"] + parts["mem_outputs_bytes"]
           + parts["mem_temporaries_bytes"] - parts["mem_aliased_bytes"])
  return dict(mem_per_device_bytes=total, **parts)


def xla_flops(compiled, num_devices: int) -> float:
  """XLA's FLOP count of a compiled program (per device) times the devices it spans."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) * num_devices


class TrainBench:
  """The config's real train step (optimizer, EMA, donation) on random data.

  Built and compiled once; ``time(steps)`` can be called repeatedly (``--compare``
  alternates two of these).
  """

  def __init__(self, config, compile_only: bool = False):
    self.config = config
    model, diffusion = train.validate(config)
    self.mesh = sharding.make_mesh(config.mesh)
    batch = config.data.batch_size
    sharding.check_batch(batch, self.mesh)
    tx = train.optimizer(config)
    self.cfg = registry.model_config(config)
    self.shape = registry.video_shape(config)
    host = registry.random_inputs(config, batch, config.seed)
    host_batch = {"video": host["x_bthwc"]}
    for field, arg in train.BATCH_TO_MODEL.items():
      if arg in host:
        host_batch[field] = host[arg]
    step_fn = train.make_train_step(model, diffusion, tx, config)
    state, state_sh = train.init_train_state(config, model, tx, self.mesh, compile_only)
    data = sharding.shard_batch(host_batch, self.mesh)
    with jax.set_mesh(self.mesh):
      jitted = jax.jit(step_fn, in_shardings=(state_sh, None), out_shardings=(state_sh, None),
                       donate_argnums=0)
      t0 = time.perf_counter()
      self.compiled = jitted.lower(state, data).compile()
      self.compile_s = time.perf_counter() - t0
    self.state, self.data = state, data
    if not compile_only:
      self.time(1)  # warm-up

  def time(self, steps: int) -> float:
    times = []
    with jax.set_mesh(self.mesh):
      for _ in range(steps):
        t0 = time.perf_counter()
        self.state, out = self.compiled(self.state, self.data)
        jax.block_until_ready(out["loss"])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))

  def result(self, step_s: float | None, peak: tuple[float, str]) -> dict:
    c = self.config
    batch = c.data.batch_size
    analytic = 3 * batch * flops_lib.forward_flops(self.cfg, self.shape, c.text.max_len)
    tokens = batch * flops_lib.num_tokens(self.cfg, self.shape)
    out = dict(what="train", step_s=step_s, compile_s=self.compile_s,
               flops_per_step_xla=xla_flops(self.compiled, self.mesh.size),
               flops_per_step_analytic=float(analytic), batch=batch,
               tokens_per_clip=flops_lib.num_tokens(self.cfg, self.shape),
               mesh=dict(self.mesh.shape), dtype=c.model.dtype, attention=c.model.attention,
               remat=c.model.remat, scan_layers=bool(self.cfg.scan_layers))
    out.update(_rates(analytic, tokens, step_s, peak))
    out.update(memory(self.compiled))
    return out


def _rates(flops: float, tokens: int, step_s: float | None, peak: tuple[float, str]) -> dict:
  achieved = flops / step_s / 1e12 if step_s else float("nan")
  return dict(tflops_per_s=achieved, peak_tflops_per_s=peak[0], peak_source=peak[1],
              mfu=achieved / peak[0] if peak[0] == peak[0] else float("nan"),
              tokens_per_s=tokens / step_s if step_s else float("nan"),
              backend=jax.default_backend(), device_count=jax.device_count())


def train_step(config, steps: int = 5, peak: tuple[float, str] | None = None,
               compile_only: bool = False) -> dict:
  bench = TrainBench(config, compile_only)
  step_s = None if compile_only else bench.time(steps)
  return bench.result(step_s, peak or peak_tflops(config))


def sample(config, steps: int = 2, peak: tuple[float, str] | None = None) -> dict:
  """One whole sample (the config's sampler and guidance) of a batch of sample.num_videos."""
  model, cfg = registry.build(config)
  shape = registry.video_shape(config)
  diffusion = Diffusion.from_config(config.diffusion, flops_lib.num_tokens(cfg, shape))
  sampler = SamplerConfig.from_config(config.sample)
  inputs = registry.dummy_inputs(config, 1)
  params = jax.jit(model.init)(jax.random.key(0), **inputs)
  batch = config.sample.num_videos
  host = registry.random_inputs(config, batch, config.seed)
  cond = {k: v for k, v in host.items() if k not in ("x_bthwc", "t_b")}
  c = cost_lib.sampler_cost(model, params, diffusion, sampler, cond, (batch,) + shape,
                            float(config.sample.fps), repeats=steps)
  calls = c["model_calls_per_sample"]
  # A guided call runs the model on 3 copies of the batch (both, text only, none).
  analytic = 3 * batch * calls * flops_lib.forward_flops(cfg, shape, config.text.max_len)
  step_s = c["seconds_per_sample"] * batch
  # The first call compiles and runs once.
  out = dict(what="sample", step_s=step_s, compile_s=max(0.0, c["first_call_s"] - step_s),
             flops_per_step_xla=c["flops_per_sample"] * batch,
             flops_per_step_analytic=float(analytic), batch=batch, sampler=sampler.name,
             model_calls=calls, seconds_per_video_second=c["seconds_per_video_second"],
             tflops_per_video_second=c["tflops_per_video_second"])
  out.update(_rates(analytic, batch * flops_lib.num_tokens(cfg, shape), step_s,
                    peak or peak_tflops(config)))
  out["mem_per_device_bytes"] = float("nan")
  return out
