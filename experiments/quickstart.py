r"""The whole pipeline in one command, on the built-in synthetic faces (15-20 min, 2 CPU cores):

  python -m experiments.quickstart --workdir=runs/quickstart

1. builds the synthetic dataset if it is missing (``data/synthetic_faces_bench``);
2. trains ``configs/synthetic_faces.py:quickstart`` (resuming from the workdir);
3. samples held-out identities with their prompts and evaluates them (identity
   gap with its 95% CI, action accuracy vs chance, FVD, cost);
4. writes ``W/report.html``: reference face, generated GIF, prompt and a real clip
   per sample, the loss curve and the metrics table.

Re-running resumes: a finished phase is not repeated (training continues from
its last checkpoint; an evaluation of the final step is reused). ``--config``
takes any experiment config, e.g. ``configs/synthetic_faces.py:identity_bench``.
"""

from absl import flags
from ml_collections import config_flags

from video_dit import cli, quickstart
from video_dit.evaluation import evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/synthetic_faces.py:quickstart", "Experiment config file.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Where everything is written.")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 128,
                                   "Held-out examples sampled and scored in the evaluation.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 12, "Samples shown in the report.")
_METRICS = flags.DEFINE_list("metrics", list(evaluate.METRICS), "Which metrics to compute.")
_SWEEP_TEXT = flags.DEFINE_list("sweep_text", [f"{x:g}" for x in quickstart.SWEEP[0]],
                                "Text guidance scales of the trade-off sweep (empty: no sweep).")
_SWEEP_FACE = flags.DEFINE_list("sweep_face", [f"{x:g}" for x in quickstart.SWEEP[1]],
                                "Identity guidance scales of the trade-off sweep.")
_SWEEP_VIDEOS = flags.DEFINE_integer("sweep_videos", quickstart.SWEEP[2],
                                     "Held-out examples per point of the sweep.")


def main(argv):
  cli.setup(argv)
  sweep = None
  if _SWEEP_TEXT.value and _SWEEP_FACE.value:
    try:
      sweep = ([float(x) for x in _SWEEP_TEXT.value], [float(x) for x in _SWEEP_FACE.value],
               _SWEEP_VIDEOS.value)
    except ValueError:
      raise ValueError(f"--sweep_text={','.join(_SWEEP_TEXT.value)} / --sweep_face="
                       f"{','.join(_SWEEP_FACE.value)} must be comma-separated numbers") from None
  quickstart.run(_CONFIG.value, _WORKDIR.value, _NUM_VIDEOS.value, _NUM_SAMPLES.value,
                 _METRICS.value, sweep)


if __name__ == "__main__":
  cli.run(main)
