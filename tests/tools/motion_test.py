"""tools.motion: the global shift of a moved picture, per action, and the command."""

import json
import os
import subprocess
import sys

import numpy as np

from tools import motion

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _picture(seed=0, size=32):
  rng = np.random.default_rng(seed)
  img = rng.integers(0, 256, (size // 4, size // 4, 3)).repeat(4, 0).repeat(4, 1)
  return img.astype(np.uint8)


def _moved(img, dx, dy, frames=8):
  """A clip whose last frame is ``img`` rolled dx right and dy down (linearly over time)."""
  return np.stack([np.roll(img, (round(dy * k / (frames - 1)), round(dx * k / (frames - 1))),
                           axis=(0, 1)) for k in range(frames)])


def test_global_shift_reads_how_far_the_picture_moved():
  img = _picture()
  for dx, dy in [(0, 0), (5, 0), (-7, 0), (3, -2), (0, 4), (10, 0)]:  # 10: a third of 32
    clip = _moved(img, dx, dy)
    assert motion.global_shift(clip[0], clip[-1]) == (dx, dy)
  blank = np.zeros((32, 32, 3), np.uint8)  # no contrast: no shift to read
  assert motion.global_shift(blank, blank) == (0, 0)
  assert motion.global_shift(img, blank) == (0, 0)


def test_per_action_and_the_command_compare_generated_with_real(tmp_path):
  img = _picture(1)
  real = np.stack([_moved(img, 6, 0), _moved(img, -6, 0), _moved(img, 0, 0)])
  gen = np.stack([_moved(img, 1, 0), _moved(img, -6, 0), _moved(img, 0, 0)])
  actions = np.array([0, 1, 2])
  rows = motion.per_action(gen, actions, 4)
  assert rows[0]["dx"] == 1 and rows[1]["dx"] == -6 and rows[2]["size"] == 0
  assert rows[2]["change"] == 0 and rows[0]["change"] > 0 and rows[3] == dict(n=0)
  assert [r.get("at_edge") for r in rows] == [0, 0, 0, None]
  folder = tmp_path / "step_1_test3"
  folder.mkdir()
  np.savez(folder / "videos.npz", real=real, generated=gen, action=actions)
  with open(str(folder) + ".json", "w") as f:
    json.dump({"text": {"actions": ["moves right", "moves left", "smiles", "nods"]}}, f)
  out = subprocess.run([sys.executable, "-m", "tools.motion", str(folder)], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout
  assert "| moves right | 1 | (+6.0, +0.0) | (+1.0, +0.0) | 6.0 / 1.0 | 0 / 0 |" in out
  assert "nods" not in out  # no examples

  def error(folder):
    bad = subprocess.run([sys.executable, "-m", "tools.motion", str(folder)], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    return bad.stderr.strip()

  missing = error(tmp_path / "nope")
  assert "videos.npz" in missing and "does not exist" in missing
  for content, says in [("{not json", "is not a results json"), ("[1]", "names no actions"),
                        ('{"text": {"skipped": "no probe"}}', "--metrics=text")]:
    with open(str(folder) + ".json", "w") as f:
      f.write(content)
    assert says in error(folder)
  with open(str(folder) + ".json", "w") as f:
    json.dump({"text": {"actions": ["moves right"]}}, f)
  np.savez(folder / "videos.npz", real=real, action=actions)
  assert "lacks ['generated']" in error(folder)
