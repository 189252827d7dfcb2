r"""Ours against the reference on the same work, alternating in one run.

  python -m tools.side_by_side --workload=image --dit_dir=/tmp/DiT --rounds=2
  python -m tools.side_by_side --workload=video --latte_dir=/tmp/Latte \
      --ours="layout=factorised"

Each round runs ``tools.benchmark`` (``configs/bench.py:workload=W,<--ours>``) and
``tools.reference_dit`` (DiT-S/2 for the image workload, Latte-S/2 for the video one) one
after the other, each in a fresh process (a shared machine drifts: alternating puts
both under the same drift). Prints every run's JSON line, then one summary line: the
median step time of each, ``speedup`` (reference / ours, > 1 means ours is faster) and
each side's FLOPs per step and TFLOP/s by its own count.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from absl import app
from absl import flags

_WORKLOAD = flags.DEFINE_enum("workload", "image", ["image", "video"], "configs/bench.py "
                              "workload; image runs DiT-S/2, video Latte-S/2.")
_OURS = flags.DEFINE_string("ours", "", "More configs/bench.py args for ours, e.g. "
                            "'layout=factorised' or 'attention=einsum'.")
_DIT_DIR = flags.DEFINE_string("dit_dir", None, "Source folder of facebookresearch/DiT.")
_LATTE_DIR = flags.DEFINE_string("latte_dir", None, "Source folder of maxin-cn/Latte.")
_REF_AUTOCAST = flags.DEFINE_enum("reference_autocast", "", ["", "bfloat16"],
                                  "tools.reference_dit --autocast: the reference's forward "
                                  "under torch.autocast, to compare with ours in "
                                  "matmul=bfloat16 (default: float32, as its train.py).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternations.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per run.")


# configs/bench.py args that change the work on our side only: the reference would no
# longer run the same model and shapes.
FIXED = ("variant", "batch", "frames", "res", "channels", "patch", "cond", "runlocal")


def _first_json(cmd: list[str]) -> dict:
  r = subprocess.run(cmd, capture_output=True, text=True)
  lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
  if r.returncode or not lines:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
  return json.loads(lines[0])


def check_ours(ours: str) -> None:
  """Raises UsageError when --ours would change the work (not only how it is done)."""
  for item in filter(None, ours.split(",")):
    key = item.partition("=")[0]
    if key in FIXED:
      raise app.UsageError(f"--ours={item} changes the work, not how it is done; the "
                           f"reference runs the S/2 workload of configs/bench.py. Keys "
                           f"{FIXED} are fixed here: use tools.benchmark for other sizes.")


def commands(workload: str, ours: str, source_dir: str, steps: int,
             reference_autocast: str = "") -> tuple[list, list]:
  arg = ",".join(filter(None, [f"workload={workload}", ours]))
  mine = [sys.executable, "-m", "tools.benchmark", f"--config=configs/bench.py:{arg}",
          "--what=train", f"--steps={steps}"]
  flag = "--dit_dir" if workload == "image" else "--latte_dir"
  ref = [sys.executable, "-m", "tools.reference_dit", f"{flag}={source_dir}",
         f"--steps={steps}"]
  if workload == "video":
    ref.append("--frames=16")
  if reference_autocast:
    ref.append(f"--autocast={reference_autocast}")
  return mine, ref


def main(argv):
  del argv
  source = _DIT_DIR.value if _WORKLOAD.value == "image" else _LATTE_DIR.value
  if not source:
    need = "--dit_dir" if _WORKLOAD.value == "image" else "--latte_dir"
    raise app.UsageError(f"--workload={_WORKLOAD.value} compares with the reference from "
                         f"{need}")
  if _ROUNDS.value < 1 or _STEPS.value < 1:
    raise app.UsageError("--rounds and --steps must be >= 1")
  check_ours(_OURS.value)
  mine, ref = commands(_WORKLOAD.value, _OURS.value, source, _STEPS.value,
                       _REF_AUTOCAST.value)
  runs = {"ours": [], "reference": []}
  for _ in range(_ROUNDS.value):
    for side, cmd in (("ours", mine), ("reference", ref)):
      row = _first_json(cmd)
      runs[side].append(row)
      print(json.dumps(dict(side=side, **row)), flush=True)
  med = {k: statistics.median(r["step_s"] for r in v) for k, v in runs.items()}
  flops = dict(ours=runs["ours"][0]["flops_per_step_analytic"],
               reference=runs["reference"][0]["flops_per_step"])
  print(json.dumps(dict(
      what="side_by_side", workload=_WORKLOAD.value, ours=runs["ours"][0]["config"],
      reference=runs["reference"][0]["config"], ours_step_s=med["ours"],
      reference_step_s=med["reference"], speedup=med["reference"] / med["ours"],
      ours_flops_per_step=flops["ours"], reference_flops_per_step=flops["reference"],
      flops_ratio_ours_over_reference=flops["ours"] / flops["reference"],
      ours_tflops_per_s=flops["ours"] / med["ours"] / 1e12,
      reference_tflops_per_s=flops["reference"] / med["reference"] / 1e12,
      rounds=_ROUNDS.value, ours_round_s=[r["step_s"] for r in runs["ours"]],
      reference_round_s=[r["step_s"] for r in runs["reference"]])), flush=True)


if __name__ == "__main__":
  app.run(main)
