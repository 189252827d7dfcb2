import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from tests import helpers
from video_dit import sampling, video_io
from video_dit.data import real_video


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("sampling")
  helpers.train_tiny_run(root, **{"sample.num_steps": 3})
  helpers.save_reference_face(root / "face.png", 48)
  return root


def _generate(workdir, out, seed=0, **kw):
  requests = [dict(face=str(workdir / "face.png"), prompt="a person nods", seed=seed)]
  return sampling.generate(str(workdir / "run"), requests, str(out), face_is_crop=True, **kw)


def test_writes_readable_files_with_provenance(workdir, tmp_path):
  [w] = _generate(workdir, tmp_path)
  files = sorted(os.path.basename(f) for f in w["files"])
  assert files == ["sample_000_seed0." + e for e in ("gif", "json", "mp4", "png")]
  prefix = str(tmp_path / "sample_000_seed0")
  frames, fps = video_io.read_video(prefix + ".mp4")
  assert frames.shape == (8, 32, 32, 3) and fps == 8.0
  with Image.open(prefix + ".gif") as gif:
    assert gif.n_frames == 8
  strip = np.asarray(Image.open(prefix + ".png"))
  assert strip.shape[0] == 32 and strip.shape[1] > 8 * 32  # face + 8 frames
  with open(prefix + ".json") as f:
    meta = json.load(f)
  assert meta["step"] == 2 and meta["params"] == "ema" and meta["prompt"] == "a person nods"
  assert len(meta["params_digest"]) == 16 and len(meta["face_sha256"]) == 64
  assert meta["sampler"]["num_steps"] == 3 and meta["versions"]["jax"]


def test_same_seed_same_video(workdir, tmp_path):
  a = np.asarray(Image.open(_generate(workdir, tmp_path / "a")[0]["files"][1]))
  b = np.asarray(Image.open(_generate(workdir, tmp_path / "b")[0]["files"][1]))
  c = np.asarray(Image.open(_generate(workdir, tmp_path / "c", seed=1)[0]["files"][1]))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c.astype(int)).max() > 0


def test_bad_inputs_raise_clear_errors(workdir, tmp_path):
  run = str(workdir / "run")
  (tmp_path / "bad.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="cannot read the face image"):
    sampling.generate(run, [dict(face=str(tmp_path / "bad.png"), prompt="a person nods")],
                      str(tmp_path))
  with pytest.raises(ValueError, match="no face found in .*face_is_crop"):
    sampling.generate(run, [dict(face=str(workdir / "face.png"), prompt="a person nods")],
                      str(tmp_path))
  with pytest.raises(ValueError, match="the prompt is empty"):
    sampling.generate(run, [dict(face=str(workdir / "face.png"), prompt=" ")], str(tmp_path))
  with pytest.raises(FileNotFoundError, match="has no checkpoints"):
    sampling.generate(str(tmp_path), [dict(face="f.png", prompt="x")], str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 99"):
    sampling.generate(run, [dict(face="f.png", prompt="x")], str(tmp_path), step=99)


def test_a_face_photo_is_detected_and_cropped(tmp_path):
  frames, _ = video_io.read_video(real_video.carphone_path())
  Image.fromarray(frames[0]).save(tmp_path / "photo.png")
  crop = sampling.load_face(str(tmp_path / "photo.png"), 32)
  assert crop.shape == (32, 32, 3) and crop.std() > 10


def test_cli_with_a_batch_file(workdir, tmp_path):
  batch = tmp_path / "requests.jsonl"
  batch.write_text("\n".join(json.dumps(dict(face=str(workdir / "face.png"), prompt=p, seed=s,
                                             name=f"r{s}"))
                             for s, p in ((0, "a person nods"), (1, "a person smiles"))))
  out = subprocess.run(
      [sys.executable, "-m", "experiments.sample", f"--workdir={workdir / 'run'}",
       f"--batch_file={batch}", f"--out={tmp_path / 'out'}", "--face_is_crop",
       "--num_steps=2", "--sampler=heun"],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True,
      text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir))
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "out")) == sorted(
      f"r{s}.{e}" for s in (0, 1) for e in ("gif", "json", "mp4", "png"))
  with open(tmp_path / "out" / "r1.json") as f:
    meta = json.load(f)
  assert meta["sampler"]["name"] == "heun" and meta["prompt"] == "a person smiles"
