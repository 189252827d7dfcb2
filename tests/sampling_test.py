import dataclasses
import json
import logging
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
from video_dit.models import registry


@pytest.fixture
def workdir(tiny_run):
  return tiny_run


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


def test_step_cache_setting_is_recorded_with_the_full_calls(workdir, tmp_path):
  [w] = _generate(workdir, tmp_path, sampler=dict(cache_threshold=1e9))
  assert w["sampler"]["cache_threshold"] == 1e9 and w["sampler"]["num_steps"] == 3
  assert w["full_model_calls"] == 2  # the first and the last step; the middle one reused
  with pytest.raises(ValueError, match="cache_threshold=0.1 works with sampler 'euler'"):
    _generate(workdir, tmp_path / "heun", sampler=dict(cache_threshold=0.1, sampler="heun"))


def test_same_seed_same_video(workdir, tmp_path):
  a = np.asarray(Image.open(_generate(workdir, tmp_path / "a")[0]["files"][1]))
  b = np.asarray(Image.open(_generate(workdir, tmp_path / "b")[0]["files"][1]))
  c = np.asarray(Image.open(_generate(workdir, tmp_path / "c", seed=1)[0]["files"][1]))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c.astype(int)).max() > 0


def test_bad_inputs_raise_clear_errors(workdir, tmp_path):
  run = str(workdir / "run")
  gen = lambda *a, **kw: sampling.generate(*a, consent="the person agreed", **kw)
  (tmp_path / "bad.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="cannot read the face image"):
    gen(run, [dict(face=str(tmp_path / "bad.png"), prompt="a person nods")], str(tmp_path))
  with pytest.raises(ValueError, match="no face found in .*face_is_crop"):
    gen(run, [dict(face=str(workdir / "face.png"), prompt="a person nods")], str(tmp_path))
  with pytest.raises(ValueError, match="the prompt is empty"):
    gen(run, [dict(face=str(workdir / "face.png"), prompt=" ")], str(tmp_path))
  with pytest.raises(FileNotFoundError, match="has no checkpoints"):
    gen(str(tmp_path), [dict(face="f.png", prompt="x")], str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 99"):
    gen(run, [dict(face="f.png", prompt="x")], str(tmp_path), step=99)


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


def test_bad_requests_fail_before_anything_is_written(workdir, tmp_path, monkeypatch):
  run, face, out = str(workdir / "run"), str(workdir / "face.png"), tmp_path / "out"
  ok = dict(face=face, prompt="a person nods")
  gen = lambda requests, **kw: sampling.generate(run, requests, str(out), face_is_crop=True,
                                                 **kw)
  for scales, msg in (((float("nan"), None), "text_scale=nan"),
                      ((None, float("inf")), "id_scale=inf"),
                      ((-1.0, None), "text_scale=-1.0")):
    with pytest.raises(ValueError, match=msg):
      gen([ok], sampler=dict(text_scale=scales[0], face_scale=scales[1]))
  # The second request is bad: nothing of the first is written either.
  for bad, msg in ((dict(name="../../x"), "name '../../x'"), (dict(name="/tmp/x"), "name"),
                   (dict(name="a/b"), "name"), (dict(seed="abc"), "seed 'abc'"),
                   (dict(seed=1.5), "seed 1.5")):
    with pytest.raises(ValueError, match=msg):
      gen([ok, dict(ok, **bad)])
  Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "tiny.png")
  with pytest.raises(ValueError, match="8x8 px.*at least 16"):
    gen([ok, dict(ok, face=str(tmp_path / "tiny.png"))])
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the face PNG is then a "bomb"
  with pytest.raises(ValueError, match="too large"):
    gen([ok])
  monkeypatch.undo()
  assert not out.exists()
  # Outputs are never overwritten silently.
  gen([dict(ok, name="a")])
  before = (out / "a.json").read_bytes()
  with pytest.raises(FileExistsError, match="a.mp4.*--overwrite"):
    gen([dict(ok, name="a", seed=3)])
  assert (out / "a.json").read_bytes() == before
  gen([dict(ok, name="a", seed=3)], overwrite=True)
  assert json.loads((out / "a.json").read_text())["seed"] == 3


def test_batch_files_are_read_whole_first_and_long_prompts_warned(workdir, tmp_path, caplog):
  batch = tmp_path / "requests.jsonl"
  batch.write_text('{"face": "f.png", "prompt": "x"}\n\n{"face": "f.png", prompt: 1}\n')
  with pytest.raises(ValueError, match="line 3: not valid JSON"):
    sampling.read_requests(str(batch))
  batch.write_text('{"face": "f.png", "prompt": "x"}\n["not", "an", "object"]\n')
  with pytest.raises(ValueError, match="line 2: not a JSON object"):
    sampling.read_requests(str(batch))
  long = " ".join(["nod"] * 40)  # runlocal keeps 16 tokens
  with caplog.at_level(logging.WARNING):
    sampling.generate(str(workdir / "run"), [dict(face=str(workdir / "face.png"),
                                                  prompt=long)],
                      str(tmp_path / "out"), face_is_crop=True)
  assert "24 of its 40 tokens" in caplog.text


def _uncached(config, num_steps):
  """(model, perturbed params, built, shape, cond, sampler, its video) of ``config``'s
  runlocal model without the step cache."""
  model, params = helpers.init(config)
  p = helpers.perturb_zeros(params, keep=())
  built = registry.build_dit(config)
  shape = (2,) + built.shape
  cond = {k: v for k, v in registry.random_inputs(config, 2).items() if k not in ("x", "t")}
  plain_sampler = dataclasses.replace(built.sampler, num_steps=num_steps)
  plain = np.asarray(sampling.make_sampler(model, built.diffusion, plain_sampler, shape)(
      p, cond, jax.random.key(0)))
  return model, p, built, shape, cond, plain_sampler, plain


def test_step_cache_with_the_video_dit_and_dual_guidance():
  config = helpers.runlocal_config()  # text 4, face 2: three passes per guided call
  model, p, built, shape, cond, plain_sampler, plain = _uncached(config, 6)

  def cached(threshold):
    sampler = dataclasses.replace(plain_sampler, cache_threshold=threshold)
    video, stats = sampling.make_sampler(model, built.diffusion, sampler, shape,
                                         return_stats=True)(p, cond, jax.random.key(0))
    return np.asarray(video), int(stats["full_calls"])

  video, calls = cached(1e-9)  # never skips: the full passes, as the plain sampler
  assert calls == 6
  np.testing.assert_allclose(video, plain, atol=1e-6)
  video, calls = cached(1e9)  # skips all but the first and last step
  assert calls == 2 and np.all(np.isfinite(video))
  error = np.abs(video - plain).mean() / np.abs(plain).mean()
  assert 1e-4 < error < 0.5, error


def test_step_cache_with_reference_tokens():
  # The reference stream lives inside the blocks: a skipped step skips it too, and a full
  # one uses the keys/values make_sampler computed once.
  config = helpers.runlocal_config(**{"identity.mode": "separate+reference",
                                      "identity.gate": "none"})
  model, p, built, shape, cond, plain_sampler, plain = _uncached(config, 4)
  for threshold, calls in ((1e-9, 4), (1e9, 2)):
    video, stats = sampling.make_sampler(
        model, built.diffusion, dataclasses.replace(plain_sampler, cache_threshold=threshold),
        shape, return_stats=True)(p, cond, jax.random.key(0))
    assert int(stats["full_calls"]) == calls
    if calls == 4:
      np.testing.assert_allclose(np.asarray(video), plain, atol=1e-6)
    else:
      assert 0 < np.abs(np.asarray(video) - plain).max() and np.all(np.isfinite(video))
