r"""Benchmarks, printed as JSON lines; compare numbers from one run only.

  python -m tools.benchmark --config=configs/bench.py:workload=image --what=train --steps=10
  python -m tools.benchmark --config=configs/bench.py:workload=image \
      --compare="model.dtype=bfloat16"           # A = the config, B = it with the overrides
  python -m tools.benchmark --config=configs/bench.py:workload=video \
      --sweep=data.frames=1,4,16,64 --what=train  # tokens 256 .. 16k
  python -m tools.benchmark --config=configs/bench.py:variant=B --what=memory \
      --fake_devices=8 --meshes=data=1;fsdp=8;data=4,tensor=2

--what=train   the real train step (optimizer, EMA): step time, FLOPs (XLA and analytic),
               TFLOP/s, MFU, memory per device, tokens/s
--what=sample  one whole guided sample of sample.num_videos videos
--what=memory  compile only, per mesh in --meshes: per-device memory of the train step
--what=data    input pipeline clips/s on the config's dataset
--what=vae     the video autoencoder (configs with a VAE only)
"""

from __future__ import annotations

import os
import sys

# --fake_devices must take effect before jax is imported.
for _arg in sys.argv[1:]:
  if _arg.startswith("--fake_devices="):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_arg.split('=')[1]}")

import json  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from video_dit import benchmark  # noqa: E402
from video_dit import train  # noqa: E402
from video_dit.data import builders, pipeline  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WHAT = flags.DEFINE_list("what", ["train"], "train, sample, memory, data, vae.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up); median reported.")
_COMPARE = flags.DEFINE_string("compare", None,
                               "Overrides for config B, 'group.field=value;...'; A and B "
                               "alternate in one process and their ratio is printed.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternations of A and B with --compare.")
_SWEEP = flags.DEFINE_string("sweep", None, "One field and its values: 'data.frames=1,4,16'.")
_MESHES = flags.DEFINE_string("meshes", "data=1", "--what=memory: meshes, ';'-separated "
                              "'axis=size,...' (unnamed axes are 1).")
_FAKE_DEVICES = flags.DEFINE_integer("fake_devices", 0, "CPU: fake this many devices.")
_BENCH_DIR = flags.DEFINE_string("bench_dir", "/tmp/video_dit_bench",
                                 "Where a synthetic dataset is built if none exists.")


def override(config, assignments: str):
  """A copy of ``config`` with 'group.field=value;...' applied (typed like the field)."""
  config = config.copy_and_resolve_references()
  for item in filter(None, (s.strip() for s in assignments.split(";"))):
    path, eq, value = item.partition("=")
    keys = path.split(".")
    if not eq or len(keys) != 2 or keys[0] not in config or keys[1] not in config[keys[0]]:
      raise app.UsageError(f"override '{item}' must be group.field=value with an existing "
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
  """Clips/s of the input pipeline (decode, clip, resize, tokenize, batch)."""
  try:
    builders.find_dataset(config.data.data_dir)
  except FileNotFoundError:  # build the config's synthetic dataset under bench_dir
    d = config.data
    config = override(config, f"data.data_dir={bench_dir}/{d.frames}x{d.height}x{d.width}")
    train.ensure_dataset(config)
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
  rows = []
  for spec in filter(None, meshes.split(";")):
    sizes = dict(data=1, fsdp=1, tensor=1)
    for part in spec.split(","):
      k, _, v = part.partition("=")
      if k not in sizes:
        raise app.UsageError(f"--meshes: '{k}' is not a mesh axis (data, fsdp, tensor)")
      sizes[k] = int(v)
    c = override(config, ";".join(f"mesh.{k}={v}" for k, v in sizes.items()))
    r = benchmark.train_step(c, compile_only=True, peak=(float("nan"), "not measured"))
    rows.append(dict(what="memory", mesh=sizes, **{k: v for k, v in r.items()
                                                   if k.startswith("mem_")},
                     compile_s=r["compile_s"], backend=r["backend"],
                     device_count=r["device_count"]))
  return rows


def run_one(config, what: str, label: str, peak) -> list[dict]:
  if what == "train":
    rows = [benchmark.train_step(config, _STEPS.value, peak)]
  elif what == "sample":
    rows = [benchmark.sample(config, max(1, _STEPS.value // 5), peak)]
  elif what == "memory":
    rows = memory_table(config, _MESHES.value)
  elif what == "data":
    rows = [data_throughput(config, _STEPS.value, _BENCH_DIR.value)]
  elif what == "vae":
    raise app.UsageError("--what=vae: this config has no video autoencoder to benchmark")
  else:
    raise app.UsageError(f"--what={what} is unknown; use train, sample, memory, data, vae")
  return [dict(config=label, **r) for r in rows]


def compare(config_a, config_b, label_a: str, label_b: str, peak) -> list[dict]:
  """A and B compiled once each, timed alternately; medians and the B/A step-time ratio."""
  a, b = benchmark.TrainBench(config_a), benchmark.TrainBench(config_b)
  times = {label_a: [], label_b: []}
  for _ in range(_ROUNDS.value):
    times[label_a].append(a.time(_STEPS.value))
    times[label_b].append(b.time(_STEPS.value))
  med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
  rows = [dict(config=label_a, **a.result(med[label_a], peak)),
          dict(config=label_b, **b.result(med[label_b], peak))]
  rows.append(dict(what="compare", a=label_a, b=label_b,
                   step_time_ratio_b_over_a=med[label_b] / med[label_a],
                   speedup_b_over_a=med[label_a] / med[label_b], rounds=_ROUNDS.value,
                   a_round_s=times[label_a], b_round_s=times[label_b]))
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  label = config_flags.get_config_filename(flags.FLAGS["config"])
  peak = None
  if any(w in ("train", "sample") for w in _WHAT.value) or _COMPARE.value:
    peak = benchmark.peak_tflops(config)
  rows = []
  if _COMPARE.value:
    rows = compare(config, override(config, _COMPARE.value), label,
                   f"{label} + {_COMPARE.value}", peak)
  elif _SWEEP.value:
    field, _, values = _SWEEP.value.partition("=")
    for v in values.split(","):
      for what in _WHAT.value:
        rows += run_one(override(config, f"{field}={v}"), what, f"{label} {field}={v}", peak)
  else:
    for what in _WHAT.value:
      rows += run_one(config, what, label, peak)
  for r in rows:  # NaN (not measured) as null: strict JSON
    print(json.dumps({k: (None if isinstance(v, float) and v != v else v)
                      for k, v in r.items()}), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
