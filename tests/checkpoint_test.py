"""Checkpoints prove they are intact: digests saved with every item, verified on restore."""

import glob
import os
import subprocess
import sys

import jax
import pytest

from tests import helpers
from video_dit import checkpoint, train, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return helpers.train_tiny_run(tmp_path_factory.mktemp("ckpt"), steps=3,
                                **{"ckpt.every_steps": 1, "ckpt.keep": 3})


def _copy(run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  target = str(tmp_path / "run")
  shutil.copytree(run, target)
  return target


def _largest_state_file(run, step):
  files = glob.glob(os.path.join(run, "checkpoints", str(step), "state", "**", "d", "*"),
                    recursive=True)
  return max(files, key=os.path.getsize)


def _flip(path, count=16):
  data = bytearray(open(path, "rb").read())
  for i in range(count):
    data[len(data) // 2 + i] ^= 0xFF
  with open(path, "wb") as f:
    f.write(data)


def _config(run, steps, **overrides):
  config = workdir.load_config(run)
  config.total_steps = steps
  for path, value in overrides.items():
    group, field = path.split(".")
    config[group][field] = value
  return config


def test_flipped_bytes_stop_the_resume_naming_step_item_and_the_last_good_step(run, tmp_path):
  run = _copy(run, tmp_path)
  _flip(_largest_state_file(run, 3))
  with pytest.raises(checkpoint.CorruptCheckpoint,
                     match=r"step 3 .*'\w+' does not match its stored digest.*"
                           r"last step that verifies is 2.*on_corrupt=previous"):
    train.train_and_evaluate(_config(run, 4), run, jax.devices()[:1])
  with pytest.raises(checkpoint.CorruptCheckpoint, match="step 3"):
    workdir.load(run, 3)  # sampling and evaluation refuse it too
  workdir.load(run, 2)
  # Explicitly: resume from the last step that verifies.
  state = train.train_and_evaluate(_config(run, 4, **{"ckpt.on_corrupt": "previous"}), run,
                                   jax.devices()[:1])
  assert int(state.step) == 4 and checkpoint.steps(workdir.checkpoint_dir(run))[-1] == 4
  workdir.load(run, 4)


def test_truncated_or_missing_files_are_one_clear_error(run, tmp_path):
  run = _copy(run, tmp_path)
  path = _largest_state_file(run, 3)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 3)
  with pytest.raises(checkpoint.CorruptCheckpoint, match="step 3 .*cannot be read"):
    workdir.load(run, 3)
  os.remove(_largest_state_file(run, 2))
  with pytest.raises(checkpoint.CorruptCheckpoint, match="step 2 .*cannot be read"):
    workdir.load(run, 2)


def test_inspect_verify_names_the_corrupt_step(run, tmp_path):
  run = _copy(run, tmp_path)
  cmd = [sys.executable, "-m", "tools.inspect_checkpoint", f"--workdir={run}", "--verify"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.count(": ok") == 3, r.stdout + r.stderr
  _flip(_largest_state_file(run, 2), count=1)  # a single flipped bit pattern
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and "step 2: CORRUPT" in r.stdout and "step 3: ok" in r.stdout
