r"""Trains a video DiT; re-running the same command resumes.

  python -m experiments.train --config=configs/synthetic_faces.py:runlocal --workdir=runs/local
  python -m experiments.train --config=configs/synthetic_faces.py --workdir=runs/faces \
      --config.optim.lr=2e-4
Multi-host: set --distributed (or VIDEO_DIT_DISTRIBUTED=1) on every process.
"""

import os

from absl import flags
import jax
from ml_collections import config_flags

from video_dit import cli, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", os.environ.get("VIDEO_DIT_DISTRIBUTED") == "1",
                                 "Call jax.distributed.initialize() (multi-host).")


def main(argv):
  cli.setup(argv)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
