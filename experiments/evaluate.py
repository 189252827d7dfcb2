r"""Evaluates a training workdir's checkpoint on held-out identities.

  python -m experiments.evaluate --workdir=W [--step=N] [--split=test] [--num_videos=64] \
      [--metrics=fvd,identity,text,temporal,cost] [--num_steps=K --sampler=heun \
      --text_scale=4 --face_scale=2 --cache_threshold=0.1] [--raw] [--probe_dir=P] [--best_of=N]

  python -m experiments.evaluate --workdir=W --long=8 [--num_videos=32 --overlap=4]

``--long=N`` (a frame-conditioned model, ``video_dit/evaluation/long.py``) instead makes
videos of 2x, 4x ... N x the training length five ways (extending itself with identity
in every window, identity off after the first window, independent clips, co-denoised
overlapping windows with identity in every window or off after the first) and measures
identity over time and the seams, plus image-to-video from each example's first frame;
it writes W/eval/long<N>x_....json, its plots and GIFs, and W/report_long.html.

Writes W/eval/NAME.json (NAME: step, examples and sampler settings, e.g.
step_3000_test128_ema_euler32_text4_face2), TensorBoard scalars under W/eval/tensorboard,
and W/eval/NAME/ (videos.npz, GIFs and PNG strips of the first videos). On the
synthetic dataset the identity and action probes are trained on first use
(about 2 minutes on a CPU) and kept under data.data_dir/probes/.
"""

import json

from absl import flags
import jax

from video_dit import cli, report
from video_dit.evaluation import evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_SPLIT = flags.DEFINE_string("split", "test", "Dataset split whose examples are sampled.")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 64, "Examples (videos) to sample and score.")
_METRICS = flags.DEFINE_list("metrics", list(evaluate.METRICS), "Which metrics.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampler steps; default the config's.")
_SAMPLER = flags.DEFINE_string("sampler", None, "euler|heun (flow), ddim|dpmpp_2m|ddpm.")
_TEXT_SCALE = flags.DEFINE_float("text_scale", None, "Text guidance scale.")
_FACE_SCALE = flags.DEFINE_float("face_scale", None, "Identity guidance scale.")
_CACHE = flags.DEFINE_float("cache_threshold", None,
                            "Step cache: skip the DiT blocks while the accumulated relative "
                            "change stays under this (0 = off; euler/shortcut only).")
_RAW = flags.DEFINE_bool("raw", False, "Use the raw parameters instead of the EMA.")
_PROBE_DIR = flags.DEFINE_string("probe_dir", None,
                                 "Folder of identity/action probes (default under data_dir).")
_TRAIN_PROBES = flags.DEFINE_bool("train_probes", True, "Train missing probes on first use.")
_CHUNK = flags.DEFINE_integer("chunk", 8, "Videos sampled per call.")
_LONG = flags.DEFINE_integer("long", 0, "Long-video evaluation up to this many clip lengths "
                             "(a power of two; 0 = the standard evaluation).")
_OVERLAP = flags.DEFINE_integer("overlap", 0, "--long: frames each window is given of the one "
                                "before (0 = half a clip).")
_WINDOW_NOISE = flags.DEFINE_enum("window_noise", "fresh", ["fresh", "reuse"],
                                  "--long: each window's starting noise: its own, or the "
                                  "first window's at the same positions (noise rescheduling).")
_BEST_OF = flags.DEFINE_integer("best_of", 1, "Candidates sampled per example; the one most "
                                "like its reference is kept (a second identity probe picks on "
                                "synthetic data, dlib on real); the cost counts all of them.")


def main(argv):
  cli.setup(argv)
  sampler = dict(sampler=_SAMPLER.value, num_steps=_NUM_STEPS.value,
                 text_scale=_TEXT_SCALE.value, face_scale=_FACE_SCALE.value,
                 cache_threshold=_CACHE.value)
  if _LONG.value:
    from video_dit.evaluation import long  # pylint: disable=g-import-not-at-top
    results = long.evaluate_long(
        _WORKDIR.value, factor=_LONG.value, step=_STEP.value, split=_SPLIT.value,
        num_videos=_NUM_VIDEOS.value, ema=not _RAW.value, sampler=sampler,
        overlap=_OVERLAP.value, probe_dir=_PROBE_DIR.value, train_probes=_TRAIN_PROBES.value,
        window_noise=_WINDOW_NOISE.value)
    if jax.process_index() == 0:  # the one that wrote
      print(json.dumps({name: v["summary"] for name, v in results["variants"].items()},
                       indent=1))
      print(json.dumps(results["image_to_video"], indent=1))
      page = report.write_long_report(_WORKDIR.value, results)
      print(f"results: {results['path']}\nreport: {page}")
    return
  results = evaluate.evaluate(
      _WORKDIR.value, step=_STEP.value, split=_SPLIT.value, num_videos=_NUM_VIDEOS.value,
      ema=not _RAW.value, metrics=tuple(_METRICS.value),
      sampler=sampler, probe_dir=_PROBE_DIR.value, train_probes=_TRAIN_PROBES.value, chunk=_CHUNK.value,
      best_of=_BEST_OF.value)
  print(json.dumps({k: v for k, v in results.items()
                    if k in evaluate.METRICS + ("usable", "best_of")}, indent=1))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
