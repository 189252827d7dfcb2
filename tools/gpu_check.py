r"""One GPU check, written as one JSON file: the numbers to take when a GPU is lent.

  python -m tools.gpu_check --out=/tmp/gpu_check.json              # NVIDIA GPU, < 8 min
  python -m tools.gpu_check --out=/tmp/gpu_check.json --dry_run    # CPU: the same phases, tiny

Phases, in this order (each checks the time spent against --budget_s first and is
recorded as skipped when it is spent; the JSON is rewritten atomically after each):

  train           configs/bench.py:workload=video,variant=L,dtype=bfloat16,attention=cudnn
                  (4096 tokens, batch 2 per device): the real train step's median step_s,
                  mfu against the datasheet peak, mem_per_device_bytes, tokens_per_s and
                  every other field of ``video_dit.benchmark.train_step``'s row
  sample          the same config's whole guided sample: seconds_per_video_second,
                  tflops_per_video_second (``benchmark.sample``'s row)
  memory_scaling  data.frames in (1, 4, 16, 64), 256 tokens a frame (16384 at 64), batch 1
                  per device, layers scanned (compile time on GPU): per point frames, tokens,
                  mem_per_device_bytes, step_s, or error (e.g. out of memory) where it failed

JSON: dry_run, complete (false until the last phase ran), budget_s, wall_s, device
{backend, device_kind, device_count, jax_version, jaxlib_version, memory_bytes_limit,
peak_tflops_per_s, peak_source}, phases {name: {status ok|error|skipped, seconds, config,
...}}; NaN (not measured) is null. --dry_run: runlocal sizes, float32, einsum attention,
frames (1, 2), 2 timed steps; well under a minute on CPU.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

from absl import flags

from video_dit import benchmark, cli

_OUT = flags.DEFINE_string("out", None, "The JSON file to write.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Tiny settings, any backend (CPU: tests).")
_BUDGET_S = flags.DEFINE_float("budget_s", 420.0, "Seconds after which the remaining phases "
                               "(and sweep points) are skipped.")

GPU = dict(arg="dtype=bfloat16,attention=cudnn", frames=(1, 4, 16, 64), scan="true", steps=10,
           repeats=2)
DRY = dict(arg="dtype=float32,attention=einsum,runlocal=true", frames=(1, 2), scan="false",
           steps=2, repeats=1)  # scanning compiles slower on CPU


def _variant() -> tuple[str, str]:
  """'L', or the largest size there is (and a note saying so)."""
  from video_dit.models.registry import SIZES  # pylint: disable=g-import-not-at-top
  if "L" in SIZES:
    return "L", ""
  big = max(SIZES, key=lambda k: SIZES[k]["width"] ** 2 * SIZES[k]["depth"])
  return big, f"variant L is not in SIZES; used the largest, {big}"


def _config(arg: str, batch_per_device: int = 0):
  """bench.py's config; the batch rounded up to a multiple of the devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import bench  # pylint: disable=g-import-not-at-top
  config = bench.get_config(arg)
  n = jax.device_count()
  batch = batch_per_device * n or -(-config.data.batch_size // n) * n
  return benchmark.override(config, f"data.batch_size={batch}")


def _clean(x):
  """Strict JSON: NaN and inf as null, tuples as lists."""
  if isinstance(x, dict):
    return {str(k): _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_json(path: str, result: dict) -> None:
  """Atomically: a temporary file in the same folder, then os.replace."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".gpu_check.", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(_clean(result), f, indent=1)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 otherwise
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _error(e: BaseException) -> str:
  return f"{type(e).__name__}: {str(e).strip()[:2000]}"


def _memory_scaling(base: str, frames, scan: str, steps: int, peak, left) -> dict:
  """Per frames: a timed train step; where that fails, compile-only memory and the error."""
  points, last_s = [], 0.0
  for f in frames:
    arg = f"{base},frames={f},scan={scan}"
    point = dict(frames=f, config=f"configs/bench.py:{arg}")
    if left() < last_s:
      points.append(dict(point, status="skipped", error="time budget spent"))
      continue
    t0 = time.perf_counter()
    c = _config(arg, batch_per_device=1)
    try:
      row, = benchmark.train_step(c, steps, peak)[:1]
      point.update(status="ok", error=None)
    except Exception as e:  # pylint: disable=broad-except  (out of memory: keep going)
      point.update(status="error", error=_error(e))
      try:
        row, = benchmark.train_step(c, compile_only=True, peak=peak)[:1]
      except Exception as e2:  # pylint: disable=broad-except
        row = dict(compile_error=_error(e2))
    point.update(tokens=row.get("tokens_per_clip"), **row)
    last_s = time.perf_counter() - t0
    point["seconds"] = last_s
    points.append(point)
  statuses = {p["status"] for p in points}
  status = "ok" if "ok" in statuses else "skipped" if statuses == {"skipped"} else "error"
  return dict(status=status, points=points)


def run(out: str, *, dry_run: bool = False, overwrite: bool = False,
        budget_s: float = 420.0) -> dict:
  """Every phase, ``out`` rewritten after each; returns what was written."""
  if os.path.isdir(out):
    raise IsADirectoryError(f"--out={out} is a folder; name a JSON file")
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"--out={out} exists; pass --overwrite to replace it")
  if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
    raise FileNotFoundError(f"--out={out}: its folder does not exist")
  if not budget_s >= 0:
    raise ValueError(f"--budget_s={budget_s} must be >= 0")
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  if not dry_run and jax.default_backend() != "gpu":
    raise ValueError(f"no GPU found (jax backend: {jax.default_backend()}); pass --dry_run "
                     "to test the path with tiny settings")
  start = time.perf_counter()
  s = DRY if dry_run else GPU
  variant, note = _variant()
  base = f"workload=video,variant={variant},{s['arg']}"
  config = _config(base)
  peak = benchmark.peak_tflops(config)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  result = dict(dry_run=dry_run, complete=False, budget_s=budget_s, wall_s=0.0,
                variant=variant, variant_note=note,
                device=dict(backend=jax.default_backend(), device_kind=dev.device_kind,
                            device_count=jax.device_count(), jax_version=jax.__version__,
                            jaxlib_version=jaxlib.__version__,
                            memory_bytes_limit=stats.get("bytes_limit"),
                            peak_tflops_per_s=peak[0], peak_source=peak[1]),
                phases={})
  left = lambda: budget_s - (time.perf_counter() - start)
  write_json(out, result)
  phases = [
      ("train", lambda: dict(config=f"configs/bench.py:{base}",
                             **benchmark.train_step(config, s["steps"], peak)[0])),
      ("sample", lambda: dict(config=f"configs/bench.py:{base}",
                              **benchmark.sample(config, s["repeats"], peak))),
      ("memory_scaling", lambda: _memory_scaling(base, s["frames"], s["scan"], s["steps"], peak,
                                                       left)),
  ]
  for name, fn in phases:
    t0 = time.perf_counter()
    if left() <= 0:
      phase = dict(status="skipped", error="time budget spent")
    else:
      print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
      try:
        phase = {"status": "ok", **fn()}
      except Exception as e:  # pylint: disable=broad-except  (record it, run the rest)
        phase = dict(status="error", error=_error(e))
    phase["seconds"] = time.perf_counter() - t0
    result["phases"][name] = phase
    result["wall_s"] = time.perf_counter() - start
    write_json(out, result)
  result.update(complete=True, wall_s=time.perf_counter() - start)
  write_json(out, result)
  return _clean(result)


def main(argv):
  cli.setup(argv)
  if not _OUT.value:
    raise ValueError("--out is required: the JSON file to write")
  result = run(_OUT.value, dry_run=_DRY_RUN.value, overwrite=_OVERWRITE.value,
               budget_s=_BUDGET_S.value)
  phases = result["phases"]
  print(f"wrote {_OUT.value} in {result['wall_s']:.0f} s: "
        + ", ".join(f"{k} {p['status']}" for k, p in phases.items()), flush=True)
  failed = [k for k, p in phases.items() if p["status"] == "error"]
  if failed:
    sys.exit(f"error: phase {', '.join(failed)} failed; its error is in {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
