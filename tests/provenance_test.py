"""Provenance travels with every generated file and can be checked against its sidecar."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from video_dit import provenance, sampling, video_io
from video_dit.data import real_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run(tiny_run):
  return tiny_run


def test_every_file_carries_the_sidecar_record(run, tmp_path):
  [w] = sampling.generate(str(run / "run"), [dict(face=str(run / "face.png"),
                                                  prompt="a person nods", seed=4)],
                          str(tmp_path), face_is_crop=True,
                          consent="synthetic face rendered by the test")
  prefix = str(tmp_path / "sample_000_seed4")
  with open(prefix + ".json") as f:
    sidecar = json.load(f)
  for ext in (".mp4", ".png", ".gif"):
    assert provenance.read(prefix + ext) == sidecar, ext
  assert sidecar["ai_generated"] is True and sidecar["marker"].startswith("AI-generated")
  assert sidecar["created_utc"].endswith("Z") and sidecar["package_version"] == "0.1.0"
  assert sidecar["seed"] == 4 and sidecar["prompt"] == "a person nods"
  assert sidecar["face_consent"] == "synthetic face rendered by the test"
  assert sidecar["sampler"]["num_steps"] == 3 and sidecar["params"] == "ema"
  # No paths of this machine: the face is its hash, the checkpoint its folder name + step.
  text = json.dumps(sidecar)
  assert str(run) not in text and str(tmp_path) not in text
  with open(run / "face.png", "rb") as f:
    import hashlib  # pylint: disable=g-import-not-at-top
    assert sidecar["face_sha256"] == hashlib.sha256(f.read()).hexdigest()
  # The digest is the one tools.inspect_checkpoint prints for those parameters.
  r = subprocess.run([sys.executable, "-m", "tools.inspect_checkpoint",
                      f"--workdir={run / 'run'}", "--digest", "--ema"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip() == sidecar["params_digest"], r.stderr[-1000:]
  # The checker agrees, and notices an edited sidecar.
  check = lambda path: subprocess.run([sys.executable, "-m", "tools.provenance", path],
                                      cwd=ROOT, capture_output=True, text=True, timeout=300)
  r = check(prefix + ".mp4")
  assert r.returncode == 0 and "matches" in r.stdout, r.stderr[-1000:]
  with open(prefix + ".json", "w") as f:
    json.dump(dict(sidecar, seed=5), f)
  r = check(prefix + ".gif")
  assert r.returncode == 1 and "['seed']" in r.stderr
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "plain.png")
  r = check(str(tmp_path / "plain.png"))
  assert r.returncode == 1 and "carries no video_dit provenance" in r.stderr


def test_a_face_photo_needs_a_consent_statement(run, tmp_path):
  frames, _ = video_io.read_video(real_video.carphone_path())
  Image.fromarray(frames[0]).save(tmp_path / "photo.png")
  request = [dict(face=str(tmp_path / "photo.png"), prompt="a person nods")]
  with pytest.raises(ValueError, match="--consent"):
    sampling.generate(str(run / "run"), request, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")
  [w] = sampling.generate(str(run / "run"), request, str(tmp_path / "out"),
                          consent="I am the person in this photo and I agree")
  assert w["face_consent"] == "I am the person in this photo and I agree"
