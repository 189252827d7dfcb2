r"""Benchmarks, printed as JSON lines; compare numbers from one run only.

  python -m tools.benchmark --config=configs/synthetic_faces.py:runlocal --what=data,train

--what=data   input pipeline clips/s on the config's dataset (the config's synthetic
              one is built under --bench_dir when data.data_dir has none)
--what=train  forward+backward step time and clips/s of the config's model
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from video_dit import model_info
from video_dit import train
from video_dit.data import builders, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WHAT = flags.DEFINE_list("what", ["data", "train"], "Which benchmarks: data, train.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed batches / steps (after warm-up).")
_BENCH_DIR = flags.DEFINE_string("bench_dir", "/tmp/video_dit_bench",
                                 "Where a synthetic dataset is built if none exists.")


def data_throughput(config, steps: int, bench_dir: str) -> dict:
  """Clips/s of the input pipeline (decode, clip, resize, tokenize, batch)."""
  try:
    builders.find_dataset(config.data.data_dir)
  except FileNotFoundError:  # build the config's synthetic dataset under bench_dir
    d = config.data
    config = config.copy_and_resolve_references()
    config.data.data_dir = os.path.join(bench_dir, f"{d.frames}x{d.height}x{d.width}")
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


def train_throughput(config, steps: int) -> dict:
  r = model_info.run(config, steps=steps)
  return dict(what="train", step_s=r["step_s"], clips_per_s=r["batch"] / r["step_s"],
              batch=r["batch"], tokens_per_clip=r["tokens_per_clip"], params=r["params"],
              compile_s=r["compile_s"], backend=r["backend"], device_count=r["device_count"])


def main(argv):
  del argv
  config = _CONFIG.value
  for what in _WHAT.value:
    if what == "data":
      r = data_throughput(config, _STEPS.value, _BENCH_DIR.value)
    elif what == "train":
      r = train_throughput(config, _STEPS.value)
    else:
      raise app.UsageError(f"--what={what} is unknown; use data, train")
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
