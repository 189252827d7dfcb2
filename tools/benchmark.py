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
--profile      with train: where the step's time goes (video_dit/profiling.py)
"""

from __future__ import annotations

import os
import sys

# --fake_devices must take effect before jax is imported.
for _arg in sys.argv[1:]:
  if _arg.startswith("--fake_devices="):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_arg.split('=')[1]}")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from video_dit import benchmark, cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WHAT = flags.DEFINE_list("what", ["train"], "train, sample, memory, data.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up); median reported.")
_COMPARE = flags.DEFINE_string("compare", None,
                               "Overrides for config B, 'group.field=value;...'; A and B "
                               "alternate in one process and their ratio is printed.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternations of A and B with --compare.")
_SWEEP = flags.DEFINE_string("sweep", None, "One field and its values: 'data.frames=1,4,16'.")
_MESHES = flags.DEFINE_string("meshes", "data=1", "--what=memory: meshes, ';'-separated "
                              "'axis=size,...' (unnamed axes are 1).")
_PROFILE = flags.DEFINE_bool("profile", False, "--what=train: also the op-time breakdown "
                             "(matmul, attention, norms, optimizer, EMA, transfer ...), "
                             "as a JSON line and a table on stderr.")
_FAKE_DEVICES = flags.DEFINE_integer("fake_devices", 0, "CPU: fake this many devices.")
_BENCH_DIR = flags.DEFINE_string("bench_dir", "/tmp/video_dit_bench",
                                 "Where a synthetic dataset is built if none exists.")


def main(argv):
  cli.setup(argv)
  label = config_flags.get_config_filename(flags.FLAGS["config"])
  try:  # flag mistakes are usage errors; anything later keeps its traceback
    benchmark.check_request(_CONFIG.value, _WHAT.value, _COMPARE.value, _SWEEP.value,
                            _MESHES.value, _PROFILE.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  rows = benchmark.run(_CONFIG.value, label, _WHAT.value, steps=_STEPS.value,
                       compare_with=_COMPARE.value, rounds=_ROUNDS.value, sweep=_SWEEP.value,
                       meshes=_MESHES.value, bench_dir=_BENCH_DIR.value,
                       profile=_PROFILE.value)
  for r in rows:
    if r.get("what") == "profile":
      print(f"{r['config']}\n{r['table']}", file=sys.stderr, flush=True)
    print(benchmark.json_line(r), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
