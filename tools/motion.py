r"""How far the picture moves in an evaluation's videos, per prompted action, generated
beside real.

  python -m tools.motion runs/quickstart/eval/step_3000_test128_ema_euler4_text1_face2

Reads ``videos.npz`` in that folder and the action names from the json beside it. For
each action: the number of examples, the global shift from the first frame to the last
(the integer (dx, dy) that best aligns them by normalised cross-correlation of the
mean-removed grey frames; dx > 0: the picture moved right), its mean size |dx| + |dy|,
and the mean absolute change between consecutive frames (0-255). A "moves left" prompt
whose generated shift is near 0 was not made, whatever the action probe reads.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
import numpy as np

from video_dit import cli

MAX_DX, MAX_DY = 8, 6  # pixels searched each way


def global_shift(first: np.ndarray, last: np.ndarray, max_dx: int = MAX_DX,
                 max_dy: int = MAX_DY) -> tuple[int, int]:
  """(dx, dy) such that ``last`` is ``first`` moved dx right and dy down, at best."""
  a = np.asarray(first, np.float64).mean(-1)
  b = np.asarray(last, np.float64).mean(-1)
  a, b = a - a.mean(), b - b.mean()
  h, w = a.shape
  best, out = -np.inf, (0, 0)
  for dy in range(-max_dy, max_dy + 1):
    for dx in range(-max_dx, max_dx + 1):
      pa = a[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
      pb = b[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
      score = (pa * pb).mean() / np.sqrt((pa * pa).mean() * (pb * pb).mean() + 1e-12)
      if score > best:
        best, out = score, (dx, dy)
  return out


def per_action(videos: np.ndarray, actions: np.ndarray, num_actions: int) -> list[dict]:
  """Per action: n, mean dx, mean dy, mean |dx| + |dy|, mean consecutive-frame change."""
  rows = []
  for k in range(num_actions):
    idx = np.flatnonzero(actions == k)
    if not len(idx):
      rows.append(dict(n=0))
      continue
    shifts = np.array([global_shift(videos[i, 0], videos[i, -1]) for i in idx], np.float64)
    change = [np.abs(np.diff(videos[i].astype(np.float32), axis=0)).mean() for i in idx]
    rows.append(dict(n=len(idx), dx=float(shifts[:, 0].mean()), dy=float(shifts[:, 1].mean()),
                     size=float(np.abs(shifts).sum(1).mean()), change=float(np.mean(change))))
  return rows


def table(names, real_rows, gen_rows) -> str:
  lines = ["| action | n | shift real (dx, dy) | shift generated | size real / generated "
           "| frame change real / generated |", "|---|---|---|---|---|---|"]
  for name, r, g in zip(names, real_rows, gen_rows):
    if not r["n"]:
      continue
    lines.append(f"| {name} | {r['n']} | ({r['dx']:+.1f}, {r['dy']:+.1f}) | "
                 f"({g['dx']:+.1f}, {g['dy']:+.1f}) | {r['size']:.1f} / {g['size']:.1f} | "
                 f"{r['change']:.1f} / {g['change']:.1f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m tools.motion EVAL_DIR (the folder with videos.npz)")
  cli.setup(argv[:1])
  folder = argv[1].rstrip("/")
  npz, meta = os.path.join(folder, "videos.npz"), folder + ".json"
  for path, what in ((npz, "the evaluation's videos"), (meta, "its results json")):
    if not os.path.exists(path):
      sys.exit(f"error: {path} ({what}) does not exist; pass a folder that "
               "experiments.evaluate wrote, e.g. W/eval/step_N_test128_...")
  with open(meta, encoding="utf-8") as f:
    names = json.load(f).get("text", {}).get("actions")
  if not names:
    sys.exit(f"error: {meta} names no actions: evaluate with --metrics=text")
  with np.load(npz, allow_pickle=False) as z:
    real, gen, actions = z["real"], z["generated"], z["action"]
  print(table(names, per_action(real, actions, len(names)),
              per_action(gen, actions, len(names))))


if __name__ == "__main__":
  app.run(main)
