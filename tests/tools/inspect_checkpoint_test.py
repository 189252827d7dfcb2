"""tools.inspect_checkpoint on a real (tiny) training workdir."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import helpers
from video_dit import checkpoint, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return helpers.train_tiny_run(tmp_path_factory.mktemp("inspect"),
                                **{"ckpt.every_steps": 1, "sample.every_steps": 0})


def _inspect(*args):
  return subprocess.run([sys.executable, "-m", "tools.inspect_checkpoint", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_digest_and_listing_match_the_checkpoint(run):
  _, state = checkpoint.load_host(workdir.checkpoint_dir(run))
  r = _inspect(f"--workdir={run}", "--digest")
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() == checkpoint.digest(state["params"])
  r = _inspect(f"--workdir={run}", "--step=1")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "[1, 2]" in r.stdout and "step 1:" in r.stdout  # both steps kept, step 1 shown
  _, first = checkpoint.load_host(workdir.checkpoint_dir(run), 1)
  assert f"params digest {checkpoint.digest(first['params'])}" in r.stdout
  leaves = jax.tree_util.tree_flatten_with_path(first["params"])[0]
  for path, _ in leaves:
    assert checkpoint.path_str(path) in r.stdout
  total = sum(np.asarray(x).size for _, x in leaves)
  assert f"{total:,} parameters" in r.stdout
  # The EMA digest printed is the one sampling records (workdir.load's digest).
  assert f"EMA digest {workdir.load(run, 1).digest}" in r.stdout


def test_a_workdir_without_checkpoints_is_one_clear_error(tmp_path):
  r = _inspect(f"--workdir={tmp_path}")
  assert r.returncode != 0 and "no checkpoints" in r.stderr
