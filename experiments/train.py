r"""Trains a video DiT; re-running the same command resumes.

  python -m experiments.train --config=configs/synthetic_faces.py:runlocal --workdir=runs/local
  python -m experiments.train --config=configs/synthetic_faces.py --workdir=runs/faces \
      --config.optim.lr=2e-4
Multi-host: set --distributed (or VIDEO_DIT_DISTRIBUTED=1) on every process (also for
experiments.sample / evaluate / quickstart); --coordinator=host:port --num_processes=N
--process_id=I where the cluster is not detected.
"""

from absl import flags
from ml_collections import config_flags

from video_dit import cli, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")


def main(argv):
  cli.setup(argv)  # --distributed: jax.distributed.initialize()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
