r"""How far the picture moves in an evaluation's videos, per prompted action, generated
beside real.

  python -m tools.motion runs/quickstart/eval/step_3000_test128_ema_euler4_text1_face2

Reads ``videos.npz`` in that folder and the action names from the json beside it. For
each action: the number of examples, the global shift from the first frame to the last
(the integer (dx, dy) that best aligns them by normalised cross-correlation of the
mean-removed grey frames, searched up to a third of the frame each way; dx > 0: the
picture moved right; a frame without contrast reads (0, 0)), its mean size |dx| + |dy|,
how many shifts reached the search's edge, and the mean absolute change between
consecutive frames (0-255). A "moves left" prompt whose generated shift is near 0 was not
made, whatever the action probe reads. The shift is global: it reads a face sliding over
the background, not a turn or a zoom.
"""

from __future__ import annotations

import json
import os

from absl import app
import numpy as np

from video_dit import cli

def search_range(h: int, w: int) -> tuple[int, int]:
  """Pixels searched each way (x, y): a third of the frame."""
  return max(1, w // 3), max(1, h // 3)


def global_shift(first: np.ndarray, last: np.ndarray) -> tuple[int, int]:
  """(dx, dy) such that ``last`` is ``first`` moved dx right and dy down, at best;
  (0, 0) unless another shift aligns them strictly better."""
  a = np.asarray(first, np.float64).mean(-1)
  b = np.asarray(last, np.float64).mean(-1)
  a, b = a - a.mean(), b - b.mean()
  h, w = a.shape
  max_dx, max_dy = search_range(h, w)

  def score(dx, dy):
    pa = a[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    pb = b[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)]
    den = np.sqrt((pa * pa).mean() * (pb * pb).mean())
    return (pa * pb).mean() / den if den > 1e-9 else -np.inf

  best, out = score(0, 0), (0, 0)
  for dy in range(-max_dy, max_dy + 1):
    for dx in range(-max_dx, max_dx + 1):
      s = score(dx, dy)
      if s > best + 1e-9:
        best, out = s, (dx, dy)
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
    max_dx, max_dy = search_range(*videos.shape[2:4])
    edge = (np.abs(shifts[:, 0]) == max_dx) | (np.abs(shifts[:, 1]) == max_dy)
    rows.append(dict(n=len(idx), dx=float(shifts[:, 0].mean()), dy=float(shifts[:, 1].mean()),
                     size=float(np.abs(shifts).sum(1).mean()), at_edge=int(edge.sum()),
                     change=float(np.mean(change))))
  return rows


def table(names, real_rows, gen_rows) -> str:
  lines = ["| action | n | shift real (dx, dy) | shift generated | size real / generated "
           "| at the search's edge real / generated | frame change real / generated |",
           "|---|---|---|---|---|---|---|"]
  for name, r, g in zip(names, real_rows, gen_rows):
    if not r["n"]:
      continue
    lines.append(f"| {name} | {r['n']} | ({r['dx']:+.1f}, {r['dy']:+.1f}) | "
                 f"({g['dx']:+.1f}, {g['dy']:+.1f}) | {r['size']:.1f} / {g['size']:.1f} | "
                 f"{r['at_edge']} / {g['at_edge']} | {r['change']:.1f} / {g['change']:.1f} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m tools.motion EVAL_DIR (the folder with videos.npz)")
  cli.setup(argv[:1])
  folder = argv[1].rstrip("/")
  npz, meta = os.path.join(folder, "videos.npz"), folder + ".json"
  for path, what in ((npz, "the evaluation's videos"), (meta, "its results json")):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} ({what}) does not exist; pass a folder that "
                              "experiments.evaluate wrote, e.g. W/eval/step_N_test128_...")
  try:
    with open(meta, encoding="utf-8") as f:
      results = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{meta} is not a results json ({e})") from None
  text = results.get("text") if isinstance(results, dict) else None
  names = text.get("actions") if isinstance(text, dict) else None
  if not names:
    raise ValueError(f"{meta} names no actions (the text metric did not run): evaluate "
                     "with --metrics=text and an action probe")
  with np.load(npz, allow_pickle=False) as z:
    missing = {"real", "generated", "action"} - set(z.files)
    if missing:
      raise ValueError(f"{npz} lacks {sorted(missing)}: evaluate again to write them")
    real, gen, actions = z["real"], z["generated"], z["action"]
  print(table(names, per_action(real, actions, len(names)),
              per_action(gen, actions, len(names))))


if __name__ == "__main__":
  cli.run(main)
