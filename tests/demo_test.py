"""The demo's logic (video_dit/demo.py) on the tiny trained run, without a browser."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from video_dit import demo as demo_lib
from video_dit import provenance, sampling, video_io
from video_dit.data import real_video, synthetic
from video_dit.evaluation import probes


@pytest.fixture(scope="module")
def demo(tiny_run, tmp_path_factory):
  """A Demo of the tiny run, with untrained (random) probes in their own folder: their
  readings are arbitrary but deterministic, enough to check the plumbing."""
  from video_dit import workdir  # pylint: disable=g-import-not-at-top
  config = workdir.load_config(str(tiny_run / "run"))
  spec = probes.ProbeSpec.from_config(config)
  probe_dir = tmp_path_factory.mktemp("probes")
  for kind in ("identity", "action"):
    params = probes.init_params(kind, spec)
    probes.Probe(kind, spec, jax.device_get(params)).save(str(probe_dir / kind))
  out = tmp_path_factory.mktemp("demo_out")
  return demo_lib.Demo(str(tiny_run / "run"), out_dir=str(out), probe_dir=str(probe_dir),
                       log=lambda *_: None)


def _gen(demo, tiny_run, **kw):
  args = dict(face_path=str(tiny_run / "face.png"), prompt="a person nods", consent=True,
              text_scale=2.0, face_scale=2.0, steps=3, seed=5, candidates=1, is_crop=True)
  return demo.generate(**dict(args, **kw))


def test_a_photo_gives_the_crop_and_bad_images_say_why(demo, tiny_run, tmp_path):
  frames, _ = video_io.read_video(real_video.carphone_path())
  Image.fromarray(frames[0]).save(tmp_path / "photo.png")
  crop = demo.check_face(str(tmp_path / "photo.png"))
  assert crop.shape == (demo.face_size, demo.face_size, 3) and crop.std() > 10
  (tmp_path / "bad.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="not an image"):
    demo.check_face(str(tmp_path / "bad.png"))
  Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(tmp_path / "flat.png")
  with pytest.raises(ValueError, match="no face found in the uploaded image.*already a face"):
    demo.check_face(str(tmp_path / "flat.png"))
  assert demo.check_face(str(tiny_run / "face.png"), is_crop=True).shape[0] == demo.face_size


def test_without_consent_nothing_is_generated(demo, tiny_run):
  before = set(os.listdir(demo.out_dir)) if os.path.isdir(demo.out_dir) else set()
  with pytest.raises(ValueError, match="consent"):
    _gen(demo, tiny_run, consent=False)
  with pytest.raises(ValueError, match="prompt is empty"):
    _gen(demo, tiny_run, prompt="  ")
  with pytest.raises(ValueError, match="sampler 'nope'"):
    _gen(demo, tiny_run, sampler="nope")
  with pytest.raises(ValueError, match="candidates=0"):
    _gen(demo, tiny_run, candidates=0)
  after = set(os.listdir(demo.out_dir)) if os.path.isdir(demo.out_dir) else set()
  assert before == after


def test_result_files_provenance_cost_and_reproducible_seed(demo, tiny_run):
  a = _gen(demo, tiny_run)
  video, fps = video_io.read_video(a["mp4"])
  assert video.shape == (8, 32, 32, 3) and fps == demo.fps
  record = provenance.read(a["mp4"])
  assert record["prompt"] == "a person nods" and record["seed"] == 5 == a["seed"]
  assert record["face_consent"] == demo_lib.CONSENT and record == a["provenance"]
  assert record["sampler"]["text_scale"] == 2.0 and record["sampler"]["num_steps"] == 3
  with Image.open(a["plot"]) as plot:
    assert plot.size == (560, 300)
  assert len(a["similarity"]) == 8 and 0 < a["action"]["probability"] <= 1
  assert a["action"]["name"] in synthetic.ACTION_NAMES
  cost = a["cost"]
  assert cost["seconds"] > 0 and cost["flops"] > 0 and cost["video_seconds"] == 8 / fps
  assert cost["flops_per_video_second"] == pytest.approx(cost["flops"] / cost["video_seconds"])
  # The same request again: the same video, from the same compiled sampler.
  compiled = len(demo._samplers)  # pylint: disable=protected-access
  b = _gen(demo, tiny_run, text_scale=3.0)
  c = _gen(demo, tiny_run)
  assert len(demo._samplers) == compiled  # pylint: disable=protected-access
  np.testing.assert_array_equal(a["video"], c["video"])
  assert b["provenance"]["sampler"]["text_scale"] == 3.0
  # Scales left out are the run's config's, not fixed numbers.
  d = _gen(demo, tiny_run, text_scale=None, face_scale=None)
  s = demo.built.sampler
  assert (d["provenance"]["sampler"]["text_scale"], d["provenance"]["sampler"]["id_scale"]
          ) == (s.text_scale, s.id_scale)
  # Scales as arguments sample what a sampler compiled for those scales samples.
  cfg = dataclasses.replace(demo.built.sampler, num_steps=3, text_scale=2.0, id_scale=2.0)
  fixed = sampling.make_sampler(demo.built.model, demo.built.diffusion, cfg,
                                (1,) + tuple(demo.built.shape))
  cond = demo._cond(demo.check_face(str(tiny_run / "face.png"), True), "a person nods")  # pylint: disable=protected-access
  want = video_io.to_uint8(fixed(demo.restored.params, cond, jax.random.key(5))[0])
  assert np.abs(want.astype(int) - a["video"]).max() <= 1


def test_best_of_n_keeps_the_candidate_most_similar_to_the_face(demo, tiny_run):
  r = _gen(demo, tiny_run, seed=10, candidates=3)
  scores = {c["seed"]: c["identity_similarity"] for c in r["candidates"]}
  assert sorted(scores) == [10, 11, 12] and len(set(scores.values())) == 3
  assert r["seed"] == max(scores, key=scores.get)
  assert r["provenance"]["best_of"]["seeds"] == [10, 11, 12]
  # The kept seed alone reproduces the kept video.
  again = _gen(demo, tiny_run, seed=r["seed"], candidates=1)
  np.testing.assert_array_equal(again["video"], r["video"])


def test_the_command_with_a_bad_workdir_ends_in_one_error_line(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "experiments.demo", f"--workdir={tmp_path}",
                        "--port=1"], cwd=root, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path} has no checkpoints")


def test_traced_guidance_scales_are_the_compiled_ones(demo, tiny_run):
  """The tiny run's zero-initialised cross-attention ignores the prompt, so the scales are
  checked on perturbed parameters: each traced scale changes the video, and equals a
  sampler compiled with that scale fixed."""
  from tests import helpers  # pylint: disable=g-import-not-at-top
  params = helpers.perturb_zeros(demo.restored.params, keep=())
  fn, _, cfg = demo._sampler("euler", 3)  # pylint: disable=protected-access
  cond = demo._cond(demo.check_face(str(tiny_run / "face.png"), True), "a person nods")  # pylint: disable=protected-access
  key = jax.random.key(0)
  run = lambda t, f: np.asarray(fn(params, cond, key, np.float32(t), np.float32(f)))
  base, text, face = run(2.0, 2.0), run(3.0, 2.0), run(2.0, 3.0)
  assert np.abs(text - base).max() > 1e-4 and np.abs(face - base).max() > 1e-4
  fixed = sampling.make_sampler(demo.built.model, demo.built.diffusion,
                                dataclasses.replace(cfg, text_scale=3.0, id_scale=2.0),
                                (1,) + tuple(demo.built.shape))
  np.testing.assert_allclose(np.asarray(fixed(params, cond, key)), text, atol=2e-5)


def test_fast_mode_starts_on_the_fast_sampler_and_a_plain_model_has_no_shortcut(tiny_run,
                                                                                tmp_path):
  from video_dit import sampling  # pylint: disable=g-import-not-at-top
  fast = demo_lib.Demo(str(tiny_run / "run"), out_dir=str(tmp_path), log=lambda *_: None,
                       fast=True)
  assert fast.defaults["steps"] == sampling.FAST["plain"]["num_steps"]
  assert "shortcut" not in fast.samplers
  with pytest.raises(ValueError, match="sampler 'shortcut' does not fit"):
    _gen(fast, tiny_run, sampler="shortcut")
