r"""Step cache (``--cache_threshold``): speed-up and quality loss against the uncached
sampler, side by side in one process.

  python -m tools.step_cache --workdir=runs/quickstart --thresholds=0.05,0.1,0.2,0.4
  python -m tools.step_cache --runlocal   # the runlocal model, random (perturbed) weights

Samples the same batch (the first ``--batch`` test examples' conditions, or random ones
with ``--runlocal``) with the uncached Euler sampler and with each threshold, alternating
the samplers over ``--repeats`` rounds (a shared machine drifts), and prints one JSON line
per threshold: full model calls of the ``--num_steps``, the median wall time of a batch,
``speedup`` (uncached / cached time) and the quality loss, ``rel_l1`` = mean |cached -
uncached| / mean |uncached| of the model-space videos, and the PSNR of the uint8 videos.
"""

from __future__ import annotations

import dataclasses
import json
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import numpy as np

from configs import synthetic_faces
from video_dit import conditions, sampling, video_io
from video_dit import workdir as workdir_lib
from video_dit.models import registry

def define_flags():
  """The command's flags, defined when run as a command only (other tools define
  --workdir too, and tests import this module beside them)."""
  flags.DEFINE_string("workdir", None, "Training workdir (EMA parameters).")
  flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
  flags.DEFINE_string("data_dir", None, "Dataset folder; default the config's.")
  flags.DEFINE_bool("runlocal", False, "The runlocal model with random weights.")
  flags.DEFINE_list("thresholds", ["0.05", "0.1", "0.2", "0.4"],
                    "cache_threshold values to compare with 0 (off).")
  flags.DEFINE_integer("num_steps", None, "Euler steps; default the config's.")
  flags.DEFINE_integer("batch", 4, "Videos per sampler call.")
  flags.DEFINE_integer("repeats", 3, "Timed rounds.")


def setup(workdir, step, data_dir, runlocal, batch):
  """(config, model, params, cond) of a checkpoint's test examples, or of the runlocal
  model with perturbed (non-trivial) random weights and random conditions."""
  if runlocal:
    config = synthetic_faces.get_config("runlocal")
    model, _ = registry.build(config)
    params = jax.jit(lambda k: nn.unbox(model.init(k, **registry.dummy_inputs(config, 1))))(
        jax.random.key(0))
    # adaLN-Zero: a fresh model outputs zero; small noise in its zero leaves wakes it up.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten([x if np.any(x) else 0.05 * jax.random.normal(k, x.shape, x.dtype)
                             for x, k in zip(leaves, keys)])
    cond = {k: v for k, v in registry.random_inputs(config, batch).items()
            if k not in ("x", "t")}
    return config, model, params, cond
  from video_dit.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  restored = workdir_lib.load(workdir, step)
  config = restored.config
  if data_dir:
    config.data.data_dir = data_dir
  _, cond = conditions.split_batch(evaluate.load_examples(config, "test", batch))
  return config, restored.model, restored.params, cond


def compare(config, model, params, cond, thresholds, num_steps=None, repeats=3) -> list:
  """One dict per threshold (the first, 0, is the uncached sampler itself)."""
  built = registry.build_dit(config)
  base = dataclasses.replace(built.sampler, name="euler",
                             num_steps=num_steps or built.sampler.num_steps)
  shape = (len(jax.tree.leaves(cond)[0]),) + built.shape
  fns = [sampling.make_sampler(model, built.diffusion,
                               dataclasses.replace(base, cache_threshold=thr), shape,
                               return_stats=True) for thr in thresholds]
  key = jax.random.key(0)
  outs = [jax.block_until_ready(fn(params, cond, key)) for fn in fns]  # compile, warm up
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, ts in zip(fns, times):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(params, cond, key))
      ts.append(time.perf_counter() - t0)
  ref = np.asarray(outs[0][0])
  ref_u8 = video_io.to_uint8(ref).astype(np.float64)
  rows = []
  for thr, (video, stats), ts in zip(thresholds, outs, times):
    video = np.asarray(video)
    mse = np.mean((video_io.to_uint8(video).astype(np.float64) - ref_u8) ** 2)
    rows.append(dict(
        cache_threshold=thr, num_steps=base.num_steps, full_calls=int(stats["full_calls"]),
        seconds=round(float(np.median(ts)), 4),
        speedup=round(float(np.median(times[0]) / np.median(ts)), 3),
        rel_l1=float(np.abs(video - ref).mean() / np.abs(ref).mean()),
        psnr=float("inf") if mse == 0 else round(float(10 * np.log10(255 ** 2 / mse)), 2)))
  return rows


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.runlocal and not f.workdir:
    raise app.UsageError("give --workdir or --runlocal")
  config, model, params, cond = setup(f.workdir, f.step, f.data_dir, f.runlocal, f.batch)
  thresholds = [0.0] + [float(v) for v in f.thresholds]
  print(json.dumps(dict(device=jax.devices()[0].device_kind, batch=f.batch,
                        workdir=f.workdir or "runlocal (random weights)")))
  for row in compare(config, model, params, cond, thresholds, f.num_steps, f.repeats):
    print(json.dumps(row))


if __name__ == "__main__":
  define_flags()
  app.run(main)
