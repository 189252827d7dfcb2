"""Bad input on the command line: one line, ``error: ...``, exit 1, no traceback, nothing
written."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNLOCAL = "--config=configs/synthetic_faces.py:runlocal"


def _fails(module, *args, match):
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
  assert "Traceback" not in out.stderr and "FATAL" not in out.stderr, out.stderr[-3000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and match in last, last
  return last


@pytest.mark.parametrize("args, match", [
    (["--config=configs/nosuch.py"], "configs/nosuch.py"),
    (["--config=configs/synthetic_faces.py:runlocl"], "unknown config arg 'runlocl'"),
    ([RUNLOCAL, "--config.optim.lr=abc"], "--config.optim.lr=abc"),
    ([RUNLOCAL, "--config.model.foo=3", "--config.seed=1"], "--config.model.foo=3: no config "
                                                            "field 'foo'"),
    ([RUNLOCAL, "--config.total_steps=0"], "total_steps=0 must be >= 1"),
])
def test_train_flags_and_config_errors(tmp_path, args, match):
  last = _fails("experiments.train", *args, f"--workdir={tmp_path / 'w'}", match=match)
  assert "--config.seed" not in last  # only the bad override is named
  assert not os.path.exists(tmp_path / "w")


def test_workdir_and_out_that_are_files(tmp_path):
  (tmp_path / "f").write_text("x")
  _fails("experiments.train", RUNLOCAL, f"--workdir={tmp_path / 'f'}", match="is a file")


def test_resuming_with_another_model_keeps_config_json(tiny_run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(tiny_run / "run", tmp_path / "run")
  before = (tmp_path / "run" / "config.json").read_text()
  _fails("experiments.train", RUNLOCAL, f"--config.data.data_dir={tiny_run / 'data'}",
         "--config.model.depth=3", "--config.total_steps=4", f"--workdir={tmp_path / 'run'}",
         match="does not fit")
  assert (tmp_path / "run" / "config.json").read_text() == before
  assert json.loads(before)["model"]["depth"] != 3


def test_sample_evaluate_provenance_forget_errors(tiny_run, tmp_path):
  run = str(tiny_run / "run")
  (tmp_path / "out").write_text("x")
  _fails("experiments.sample", f"--workdir={run}", f"--face={tiny_run / 'face.png'}",
         "--face_is_crop", "--prompt=a person waves", f"--out={tmp_path / 'out'}",
         match="is a file")
  _fails("experiments.sample", f"--workdir={run}", f"--face={tiny_run / 'face.png'}",
         "--face_is_crop", "--prompt=x", "--face_scale=nan", f"--out={tmp_path / 's'}",
         match="--face_scale")
  _fails("experiments.evaluate", f"--workdir={run}", "--num_videos=1", match="--num_videos=1")
  (tmp_path / "junk.png").write_text("not an image")
  _fails("tools.provenance", str(tmp_path / "junk.png"), match="not a readable PNG")
  _fails("tools.forget_identity", "--identity=  ", f"--data_dir={tmp_path}", match="empty")
  _fails("tools.forget_identity", "--identity=p1", f"--data_dir={tmp_path}",
         f"--workdirs={tmp_path / 'nowd'}", match="not a training workdir")
  assert not os.path.exists(tmp_path / "s") and not os.path.exists(
      tmp_path / "forget_audit.jsonl")
