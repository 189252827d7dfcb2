"""Speed and memory of a config's train step and sampler, measured in one process.

Every result is one flat dict (``tools.benchmark`` prints them as JSON lines):

  step_s             median of the timed steps after a warm-up (compile_s separately)
  flops_per_step_xla XLA's cost analysis of the compiled program, summed over devices:
                     matmuls plus elementwise work (norms, softmax, GELU, AdamW, EMA);
                     a loop body (scanned layers, grad accumulation) is counted once
  flops_per_step_matmul  the dots of the traced program (``flops.traced_matmul_flops``):
                     matmuls only, loop bodies once
  flops_per_step_analytic  matmul FLOPs (``models.flops``), 3x forward for a train step
                     (the backward skips gradients w.r.t. the data: a few % less)
  tflops_per_s       analytic FLOPs / step_s
  peak_tflops_per_s  CPU: a large matmul measured here, in the model's dtype policy;
                     GPU/TPU: the device's datasheet dense bf16 peak, times devices
  mfu                tflops_per_s / peak_tflops_per_s
  mem_per_device_bytes  compiled memory analysis: arguments + outputs + temporaries
                     (minus donated aliases), and each part
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np

from video_dit import profiling, sharding, train
from video_dit.data import builders, pipeline
from video_dit.evaluation import cost as cost_lib
from video_dit.models import flops as flops_lib
from video_dit.models import layers
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
  return layers.probe_matmul_speeds(n, repeats, dtypes=(dtype,))[dtype]


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
    task = train.validate(config)
    self.mesh = sharding.make_mesh(config.mesh)
    batch = config.data.batch_size
    sharding.check_batch(batch, self.mesh)
    tx = train.optimizer(config)
    self.cfg, self.shape = task.cfg, task.shape
    host = registry.random_inputs(config, batch, config.seed)
    video = host.pop("x")
    if registry.latent_source(config) == "encode":
      # What the pipeline gives: pixels, which the task encodes (a VAE on the host, the
      # linear codec inside the step, fitted with the data first).
      if registry.latent_codec(config) == "pca":
        pipeline.ensure_dataset(config)
      video = np.random.default_rng(config.seed).uniform(
          -1, 1, (batch,) + tuple(registry.pixel_shape(config))).astype(np.float32)
    host_batch = task.host_batch({"video": video,
                                  **{k: v for k, v in host.items() if k != "t"}})
    step_fn = train.make_train_step(task, tx, config)
    state, state_sh = train.init_train_state(config, task, tx, self.mesh, compile_only)
    data = sharding.shard_batch(host_batch, self.mesh)
    with jax.set_mesh(self.mesh):
      jitted = jax.jit(step_fn, in_shardings=(state_sh, None), out_shardings=(state_sh, None),
                       donate_argnums=0)
      t0 = time.perf_counter()
      lowered = jitted.lower(state, data)
      self.compiled = lowered.compile()
      self.compile_s = time.perf_counter() - t0
    self.matmul_flops = flops_lib.traced_matmul_flops(lowered)
    self.state, self.data, self.host_batch = state, data, host_batch
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

  def profile(self, steps: int = 3) -> dict:
    """The step's op time by category (``profiling``) and the host-to-device transfer."""
    def run_step():
      self.state, out = self.compiled(self.state, self.data)
      jax.block_until_ready(out["loss"])
    with jax.set_mesh(self.mesh):
      prof = profiling.profile_compiled(self.compiled, run_step, steps)
      transfer = profiling.transfer_seconds(
          self.host_batch, lambda b: sharding.shard_batch(b, self.mesh))
    return dict(what="profile", transfer_s=transfer, **prof,
                table=profiling.table(prof, transfer))

  def result(self, step_s: float | None, peak: tuple[float, str]) -> dict:
    c = self.config
    batch = c.data.batch_size
    analytic = 3 * batch * flops_lib.forward_flops(self.cfg, self.shape, c.text.max_len)
    tokens = batch * flops_lib.num_tokens(self.cfg, self.shape)
    out = dict(what="train", step_s=step_s, compile_s=self.compile_s,
               flops_per_step_xla=xla_flops(self.compiled, self.mesh.size),
               flops_per_step_analytic=float(analytic),
               flops_per_step_matmul=float(self.matmul_flops), batch=batch,
               tokens_per_clip=flops_lib.num_tokens(self.cfg, self.shape),
               mesh=dict(self.mesh.shape), dtype=c.model.dtype, attention=c.model.attention,
               attention_layout=self.cfg.attention_layout,
               matmul_dtype=self.cfg.matmul_dtype or c.model.dtype,  # 'auto' resolved
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
               compile_only: bool = False, profile: bool = False) -> list[dict]:
  """The train step's result row, and with ``profile`` its op-time breakdown row."""
  bench = TrainBench(config, compile_only)
  step_s = None if compile_only else bench.time(steps)
  rows = [bench.result(step_s, peak or peak_tflops(config))]
  if profile:
    rows.append(bench.profile())
  return rows


def sample(config, steps: int = 2, peak: tuple[float, str] | None = None) -> dict:
  """One whole sample (the config's sampler and guidance) of a batch of sample.num_videos."""
  dit = registry.build_dit(config)
  model, cfg, shape, diffusion, sampler = (dit.model, dit.cfg, dit.shape, dit.diffusion,
                                           dit.sampler)
  inputs = registry.dummy_inputs(config, 1)
  params = jax.jit(model.init)(jax.random.key(0), **inputs)
  batch = config.sample.num_videos
  host = registry.random_inputs(config, batch, config.seed)
  cond = {k: v for k, v in host.items() if k not in ("x", "t")}
  c = cost_lib.sampler_cost(model, params, diffusion, sampler, cond, (batch,) + shape,
                            float(config.sample.fps), repeats=steps,
                            pixel_frames=config.data.frames)  # the DiT alone: no decode
  calls = sampler.model_calls
  analytic = batch * sampler.network_passes * flops_lib.forward_flops(cfg, shape,
                                                                      config.text.max_len)
  step_s = c["seconds_per_sample"] * batch
  # The first call compiles and runs once.
  out = dict(what="sample", step_s=step_s, compile_s=max(0.0, c["first_call_s"] - step_s),
             flops_per_step_xla=c["flops_per_sample"] * batch,
             flops_per_step_matmul=c["matmul_flops_per_sample"] * batch,
             flops_per_step_analytic=float(analytic), batch=batch, sampler=sampler.name,
             model_calls=calls, network_passes=sampler.network_passes,
             seconds_per_video_second=c["seconds_per_video_second"],
             tflops_per_video_second=c["tflops_per_video_second"])
  out.update(_rates(analytic, batch * flops_lib.num_tokens(cfg, shape), step_s,
                    peak or peak_tflops(config)))
  out["mem_per_device_bytes"] = float("nan")
  return out


# ----------------------------------------------------------------------------- runs


def override(config, assignments: str):
  """A copy of ``config`` with 'group.field=value;...' applied (typed like the field)."""
  config = config.copy_and_resolve_references()
  for item in filter(None, (s.strip() for s in assignments.split(";"))):
    path, eq, value = item.partition("=")
    keys = path.split(".")
    if not eq or len(keys) != 2 or keys[0] not in config or keys[1] not in config[keys[0]]:
      raise ValueError(f"override '{item}' must be group.field=value with an existing "
                       "field, e.g. model.dtype=bfloat16")
    old = config[keys[0]][keys[1]]
    if isinstance(old, bool):
      new = value.lower() in ("1", "true")
    elif isinstance(old, (tuple, list)):
      new = tuple(type(old[0])(v) for v in value.split("x")) if old else ()
    else:
      new = type(old)(value)
    with config.unlocked():
      config[keys[0]][keys[1]] = new
  return config


def data_throughput(config, steps: int, bench_dir: str) -> dict:
  """Clips/s of the input pipeline (decode, clip, resize, tokenize, batch); a missing
  synthetic dataset is built under ``bench_dir``."""
  try:
    builders.find_dataset(config.data.data_dir)
  except FileNotFoundError:
    d = config.data
    config = override(config, f"data.data_dir={bench_dir}/{d.frames}x{d.height}x{d.width}")
    pipeline.ensure_dataset(config)
  it = pipeline.make_iterator(config)
  next(it)  # warm-up: opens the shards, starts the threads
  t0 = time.perf_counter()
  for _ in range(steps):
    next(it)
  seconds = time.perf_counter() - t0
  return dict(what="data", clips_per_s=steps * config.data.batch_size / seconds,
              batch=config.data.batch_size,
              clip=[config.data.frames, config.data.height, config.data.width],
              threads=config.data.num_threads)


def memory_table(config, meshes: str) -> list[dict]:
  """Compile-only train steps, one per mesh ('axis=size,...' separated by ';')."""
  rows = []
  for spec in filter(None, meshes.split(";")):
    sizes = _mesh_sizes(spec)
    c = override(config, ";".join(f"mesh.{k}={v}" for k, v in sizes.items()))
    r, = train_step(c, compile_only=True, peak=(float("nan"), "not measured"))
    rows.append(dict(what="memory", mesh=sizes, **{k: v for k, v in r.items()
                                                   if k.startswith("mem_")},
                     compile_s=r["compile_s"], backend=r["backend"],
                     device_count=r["device_count"]))
  return rows


WHATS = ("train", "sample", "memory", "data")


def _mesh_sizes(spec: str) -> dict[str, int]:
  sizes = dict(data=1, fsdp=1, tensor=1)
  for part in spec.split(","):
    k, _, v = part.partition("=")
    if k not in sizes or not v.lstrip("-").isdigit():
      raise ValueError(f"--meshes: '{part}' is not axis=size with an axis of (data, fsdp, "
                       "tensor)")
    sizes[k] = int(v)
  return sizes


def check_request(config, whats, compare_with: str | None = None, sweep: str | None = None,
                  meshes: str = "data=1", profile: bool = False) -> None:
  """Raises ValueError naming a bad --what, override, sweep or mesh before any work."""
  for what in whats:
    if what not in WHATS:
      raise ValueError(f"--what={what} is unknown; use one of {WHATS}")
  if profile and "train" not in whats:
    raise ValueError("--profile profiles the train step: use it with --what=train")
  if compare_with:
    override(config, compare_with)
  if sweep:
    field, eq, values = sweep.partition("=")
    if not eq or not values:
      raise ValueError(f"--sweep={sweep!r} must be group.field=v1,v2,...")
    for v in values.split(","):
      override(config, f"{field}={v}")
  for spec in filter(None, meshes.split(";")):
    _mesh_sizes(spec)


def run_one(config, what: str, label: str, peak, steps: int, meshes: str = "data=1",
            bench_dir: str = "/tmp/video_dit_bench", profile: bool = False) -> list[dict]:
  if what == "train":
    rows = train_step(config, steps, peak, profile=profile)
  elif what == "sample":
    rows = [sample(config, max(1, steps // 5), peak)]
  elif what == "memory":
    rows = memory_table(config, meshes)
  elif what == "data":
    rows = [data_throughput(config, steps, bench_dir)]
  else:
    raise ValueError(f"--what={what} is unknown; use one of {WHATS}")
  return [dict(config=label, **r) for r in rows]


def compare(config_a, config_b, label_a: str, label_b: str, peak, steps: int,
            rounds: int, profile: bool = False) -> list[dict]:
  """A and B compiled once each, timed alternately; medians and the B/A step-time ratio
  (and with ``profile`` each one's op-time breakdown)."""
  a, b = TrainBench(config_a), TrainBench(config_b)
  times = {label_a: [], label_b: []}
  for _ in range(rounds):
    times[label_a].append(a.time(steps))
    times[label_b].append(b.time(steps))
  med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
  rows = [dict(config=label_a, **a.result(med[label_a], peak)),
          dict(config=label_b, **b.result(med[label_b], peak))]
  rows.append(dict(what="compare", a=label_a, b=label_b,
                   step_time_ratio_b_over_a=med[label_b] / med[label_a],
                   speedup_b_over_a=med[label_a] / med[label_b], rounds=rounds,
                   a_round_s=times[label_a], b_round_s=times[label_b]))
  if profile:
    rows += [dict(config=label_a, **a.profile()), dict(config=label_b, **b.profile())]
  return rows


def run(config, label: str, whats, *, steps: int = 10, compare_with: str | None = None,
        rounds: int = 3, sweep: str | None = None, meshes: str = "data=1",
        bench_dir: str = "/tmp/video_dit_bench", profile: bool = False) -> list[dict]:
  """Everything ``tools.benchmark`` can be asked: ``whats`` for the config, or A vs B
  (``compare_with``: overrides for B), or a ``sweep`` 'group.field=v1,v2,...';
  ``profile`` adds each train step's op-time breakdown."""
  check_request(config, whats, compare_with, sweep, meshes, profile)
  peak = None
  if any(w in ("train", "sample") for w in whats) or compare_with:
    peak = peak_tflops(config)
  if compare_with:
    return compare(config, override(config, compare_with), label,
                   f"{label} + {compare_with}", peak, steps, rounds, profile)
  kw = dict(steps=steps, meshes=meshes, bench_dir=bench_dir, profile=profile)
  rows = []
  if sweep:
    field, _, values = sweep.partition("=")
    for v in values.split(","):
      for what in whats:
        rows += run_one(override(config, f"{field}={v}"), what, f"{label} {field}={v}", peak,
                        **kw)
    return rows
  for what in whats:
    rows += run_one(config, what, label, peak, **kw)
  return rows


def json_line(row: dict) -> str:
  """Strict JSON: NaN (not measured) as null."""
  return json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()})
