r"""Builds the model of a config and runs one sharded forward/backward on random video.

The loss is the config's diffusion loss on random "clean" video and conditions.

Prints parameter counts, tokens per clip, FLOPs (XLA's count of the compiled
step and the analytic matmul count), compile and step time, as text and as one
final JSON line.

  python -m tools.model_info --config=configs/synthetic_faces.py:runlocal
  python -m tools.model_info --config=configs/synthetic_faces.py:variant=B \
      --config.mesh.fsdp=-1 --config.mesh.data=1 --batch=8
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from video_dit import cli
from video_dit.model_info import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch; 0 = config.data.batch_size.")


def main(argv):
  cli.setup(argv)
  r = run(_CONFIG.value, _BATCH.value)
  print(f"mesh {r['mesh']} on {r['device_count']} {r['backend']} device(s); "
        f"batch {r['batch']} clips of {tuple(r['video_shape'])}")
  print(f"tokens per clip: {r['tokens_per_clip']}")
  print(f"parameters: {r['params']:,}")
  for name, n in sorted(r["params_by_module"].items(), key=lambda kv: -kv[1]):
    print(f"  {name:24s} {n:,}")
  print(f"FLOPs per fwd+bwd step: XLA {r['flops_per_step_xla']:.4g}, "
        f"analytic (matmuls) {r['flops_per_step_analytic']:.4g}")
  print(f"compile {r['compile_s']:.1f} s, step {r['step_s'] * 1e3:.1f} ms, "
        f"loss {r['loss']:.4f}, grad norm {r['grad_norm']:.4g}")
  print(json.dumps(r))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
