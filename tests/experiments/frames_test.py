"""Given frames end to end on a tiny frame-conditioned run: image-to-video, extension and
long videos through ``sampling.generate`` (the sample CLI's engine)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import helpers
from video_dit import sampling, video_io

SIDE = 32  # runlocal frames are 32x32; the PNG strip is face | 2 px | frame 0 | frame 1 ...


@pytest.fixture(scope="module")
def framed(tmp_path_factory):
  root = tmp_path_factory.mktemp("framed")
  helpers.train_tiny_run(root, identities=10, **{"train.context_rate": 0.5,
                                                 "sample.num_steps": 2})
  helpers.save_reference_face(root / "face.png", 48)
  still = np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)
  Image.fromarray(still).save(root / "still.png")
  clip = np.random.default_rng(1).integers(0, 256, (11, SIDE, SIDE, 3), np.uint8)
  video_io.write_video(str(root / "clip.mp4"), clip)
  return root


def _frames(png: str, n: int) -> np.ndarray:
  strip = np.asarray(Image.open(png).convert("RGB"))
  return np.stack([strip[:, SIDE + 2 + i * SIDE:SIDE + 2 + (i + 1) * SIDE] for i in range(n)])


def _generate(root, out, **kw):
  request = dict(prompt="a person nods", seed=0, face=kw.pop("face", str(root / "face.png")))
  return sampling.generate(str(root / "run"), [request], str(out), face_is_crop=True,
                           consent="synthetic test data", **kw)


def test_image_to_video_starts_from_the_still_with_or_without_a_face(framed, tmp_path):
  from video_dit.long_video import fit_frame
  still = fit_frame(np.asarray(Image.open(framed / "still.png")), SIDE, SIDE)
  for face in (str(framed / "face.png"), None):
    [w] = _generate(framed, tmp_path / str(bool(face)), first_frame=str(framed / "still.png"),
                    face=face)
    frames = _frames(w["files"][1], 8)
    np.testing.assert_array_equal(frames[0], still)  # one tubelet (2 frames) is the still
    np.testing.assert_array_equal(frames[1], still)
    assert not np.array_equal(frames[2], still)
    assert w["windows"] == 1 and w["given_frames"] == 2 and len(w["first_frame_sha256"]) == 64
    assert (w["face_sha256"] is None) == (face is None)


def test_long_video_is_made_by_sliding_windows(framed, tmp_path):
  [w] = _generate(framed, tmp_path, num_frames=20)
  frames, _ = video_io.read_video(w["files"][0])
  assert frames.shape == (20, SIDE, SIDE, 3) and w["video_shape"][0] == 20
  assert w["windows"] == 4 and w["overlap_frames"] == 4   # 0-8, then 4 new per window
  [w6] = _generate(framed, tmp_path / "o6", num_frames=20, overlap=6)
  assert w6["windows"] == 7 and w6["overlap_frames"] == 6


def test_extend_keeps_the_video_and_continues_it(framed, tmp_path):
  [w] = _generate(framed, tmp_path, extend=str(framed / "clip.mp4"))
  source, _ = video_io.read_video(str(framed / "clip.mp4"))
  frames = _frames(w["files"][1], 14)  # 11 frames -> the last 10 (whole tubelets) + 4 new
  np.testing.assert_array_equal(frames[:10], source[1:])
  assert w["video_shape"][0] == 14 and w["given_frames"] == 10
  with open(w["files"][-1]) as f:
    assert json.load(f)["extend_sha256"] == w["extend_sha256"]


@pytest.mark.parametrize("kw, words", [
    (dict(num_frames=21), "multiple of 2 frames"),
    (dict(num_frames=20, overlap=8), "overlap=4|between 1 and 7"),
    (dict(first_frame="missing.png"), "cannot read the first frame"),
    (dict(extend="missing.mp4"), "cannot read the video to extend"),
    (dict(extend="X", first_frame="Y"), "not both"),
])
def test_bad_frame_requests_are_one_error_and_write_nothing(framed, tmp_path, kw, words):
  kw = {k: (str(framed / v) if k in ("extend", "first_frame") and v in ("X", "Y") else v)
        for k, v in kw.items()}
  with pytest.raises(ValueError, match=words):
    _generate(framed, tmp_path / "out", **kw)
  assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")


def test_a_model_without_frame_conditioning_says_how_to_get_one(tiny_run, framed, tmp_path):
  request = dict(prompt="a person nods", seed=0, face=str(tiny_run / "face.png"))
  with pytest.raises(ValueError, match="context_rate"):
    sampling.generate(str(tiny_run / "run"), [request], str(tmp_path / "out"),
                      face_is_crop=True, consent="test", first_frame=str(framed / "still.png"))
  assert not os.path.exists(tmp_path / "out")


def test_long_evaluation_measures_five_variants_and_image_to_video(framed):
  from video_dit import report
  from video_dit.evaluation import long, probes
  from video_dit import workdir as workdir_lib
  config = workdir_lib.load_config(str(framed / "run"))
  spec = probes.ProbeSpec.from_config(config)
  # Barely trained probes: this test checks what is measured, not how well (an
  # unverified identity probe only adds a warning).
  probes.train_probe("identity", spec, steps=10, batch=16, log=None).save(
      str(framed / "probes" / "identity"))
  probes.train_probe("action", spec, steps=5, batch=8, log=None).save(
      str(framed / "probes" / "action"))
  r = long.evaluate_long(str(framed / "run"), factor=4, num_videos=4,
                         probe_dir=str(framed / "probes"), train_probes=False,
                         log=lambda *_: None)
  with open(r["path"]) as f:
    saved = json.load(f)
  v = saved["variants"]
  assert set(v) == {"extend", "identity_off", "independent", "joint", "joint_identity_off"}
  assert v["joint"]["boundaries"] == v["extend"]["boundaries"]
  assert v["extend"]["boundaries"] == [8, 12, 16, 20, 24, 28]
  assert v["independent"]["boundaries"] == [8, 16, 24]
  for name in v:
    assert len(v[name]["per_frame"]) == 32 and len(v[name]["frame_change"]) == 31
    assert set(v[name]["summary"]) == {"2x", "4x"}
    s = v[name]["summary"]["4x"]
    assert s["end_over_first"]["ci95"][0] <= s["end_over_first"]["ratio"] <= (
        s["end_over_first"]["ci95"][1])
  with np.load(os.path.join(saved["media"], "videos.npz")) as z:
    a, b, c = z["extend"], z["identity_off"], z["independent"]
    assert a.shape == (4, 32, SIDE, SIDE, 3)
    np.testing.assert_array_equal(a[:, :8], b[:, :8])  # one first window, the plain clip
    np.testing.assert_array_equal(a[:, :8], c[:, :8])
    assert not np.array_equal(a[:, 8:], c[:, 8:])  # (b differs through the identity gate,
    #                                                   still closed after 2 steps)
    assert z["joint"].shape == a.shape and not np.array_equal(z["joint"], a)
  i2v = saved["image_to_video"]
  assert i2v["first_frame_psnr_db"] == long.PSNR_CAP and i2v["n"] == 4  # given: exact
  for file in ("identity_similarity.png", "frame_change.png", "strip.png", "000.gif",
               "image_to_video.png"):
    assert os.path.isfile(os.path.join(saved["media"], file))
  page = report.write_long_report(str(framed / "run"), saved)
  with open(page) as f:
    text = f.read()
  assert "Longer videos" in text and "identity_similarity.png" in text


def test_long_evaluation_refuses_a_plain_model_and_bad_factors(tiny_run):
  from video_dit.evaluation import long
  with pytest.raises(ValueError, match="power of two"):
    long.evaluate_long(str(tiny_run / "run"), factor=3)
  with pytest.raises(ValueError, match="context_rate"):
    long.evaluate_long(str(tiny_run / "run"), factor=2)


def test_co_denoised_long_video_with_a_plain_model(tiny_run, tmp_path):
  request = dict(prompt="a person nods", seed=0, face=str(tiny_run / "face.png"))
  run = lambda out, **kw: sampling.generate(str(tiny_run / "run"), [request], str(out),
                                            face_is_crop=True, **kw)
  [w] = run(tmp_path / "a", num_frames=20, windows="joint")
  frames, _ = video_io.read_video(w["files"][0])
  assert frames.shape == (20, SIDE, SIDE, 3) and w["video_shape"][0] == 20
  assert w["windows"] == 4 and w["overlap_frames"] == 4 and w["window_mode"] == "joint"
  [again] = run(tmp_path / "b", num_frames=20, windows="joint")  # same seed, same video
  # (the lossless PNG strips: an mp4 encoder may code the same frames differently)
  np.testing.assert_array_equal(np.asarray(Image.open(again["files"][1])),
                                np.asarray(Image.open(w["files"][1])))
  for kw, words in ((dict(num_frames=8, windows="joint"), "beyond the training length"),
                    (dict(num_frames=20, windows="sideways"), "sliding or joint"),
                    (dict(num_frames=20, windows="joint", overlap=8), "between 1 and 7")):
    with pytest.raises(ValueError, match=words):
      run(tmp_path / "bad", **kw)
    assert not os.path.exists(tmp_path / "bad")


def test_co_denoised_windows_refuse_given_frames(framed, tmp_path):
  with pytest.raises(ValueError, match="sliding windows"):
    _generate(framed, tmp_path / "out", first_frame=str(framed / "still.png"), num_frames=20,
              windows="joint")
  assert not os.path.exists(tmp_path / "out")
