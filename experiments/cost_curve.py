r"""Quality against cost over network passes per sample (``video_dit/evaluation/curve.py``).

  python -m experiments.cost_curve --teacher=runs/quickstart \
      [--guidance=runs/qs_guidance --shortcut=runs/qs_shortcut] [--steps=1,2,4,8,16,32 \
      --cache_thresholds=0.1,0.3 --best_of=shortcut:4:4 --num_videos=64]

Evaluates every point on the same held-out examples (resumable: points already
evaluated are read back), writes W/eval/cost_curve_<examples>.json of the teacher,
prints the table and redraws the teacher's report.html with the curve.
"""

import json

from absl import flags

from video_dit import cli, report
from video_dit.evaluation import curve as curve_lib

_TEACHER = flags.DEFINE_string("teacher", None, "Workdir of the trained DiT (plain sampler).")
_GUIDANCE = flags.DEFINE_string("guidance", None, "Workdir of its guidance-distilled student.")
_SHORTCUT = flags.DEFINE_string("shortcut", None, "Workdir of its shortcut (few-step) student.")
_STEPS = flags.DEFINE_list("steps", ["1", "2", "4", "8", "16", "32"], "Sampler steps per point.")
_ONE_PASS_STEPS = flags.DEFINE_list("one_pass_steps", [], "The one-pass student's steps "
                                    "(default --steps).")
_SHORTCUT_STEPS = flags.DEFINE_list("shortcut_steps", [], "The shortcut student's steps "
                                    "(default --steps).")
_CACHE = flags.DEFINE_list("cache_thresholds", [], "Step-caching thresholds (32 Euler steps).")
_BEST_OF = flags.DEFINE_list("best_of", [], "method:steps:K points, e.g. shortcut:4:4.")
_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 64, "Held-out examples per point.")
_CHUNK = flags.DEFINE_integer("chunk", 32, "Videos sampled per call.")
_RETIME = flags.DEFINE_integer("retime", 0, "Then time every point again, alternating over "
                               "this many rounds in one process (0: keep each evaluation's "
                               "own timing).")
_PROBE_DIR = flags.DEFINE_string("probe_dir", None, "Folder of the identity/action probes.")


def _best_of(items):
  out = []
  for item in items:
    parts = item.split(":")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
      raise ValueError(f"--best_of={item} must be method:steps:K, e.g. shortcut:4:4")
    out.append((parts[0], int(parts[1]), int(parts[2])))
  return out


def main(argv):
  cli.setup(argv)
  pts = curve_lib.points(_TEACHER.value, _GUIDANCE.value, _SHORTCUT.value,
                         steps=[int(s) for s in _STEPS.value],
                         cache_thresholds=[float(c) for c in _CACHE.value],
                         best_of=_best_of(_BEST_OF.value),
                         one_pass_steps=[int(s) for s in _ONE_PASS_STEPS.value],
                         shortcut_steps=[int(s) for s in _SHORTCUT_STEPS.value])
  curve = curve_lib.cost_curve(pts, num_videos=_NUM_VIDEOS.value, chunk=_CHUNK.value,
                               probe_dir=_PROBE_DIR.value)
  if _RETIME.value:
    curve = curve_lib.retime(curve, _RETIME.value)
  base = curve_lib.baseline(curve)
  print(f"curve: {curve['path']}")
  for r in curve_lib.table(curve):
    print(f"  {r['label']:<28} passes {r['network_passes']!s:>5}  gap {r['gap']}  "
          f"action {r['action_accuracy']}  FVD {r['fvd']}  usable {r['usable_fraction']}  "
          f"s/usable s {r['seconds_per_usable_second']}  x cheaper {r.get('cheaper')}")
  if base is not None:
    with open(base["result"], encoding="utf-8") as f:
      results = json.load(f)
    path = report.write_report(_TEACHER.value, results, curve=curve,
                               title=f"video_dit: step {results['step']}, quality against cost")
    print(f"report: {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["teacher"])
  cli.run(main)
