"""Real faces end to end: a folder dataset of two real identities (the carphone clip and
pan/zoom clips of the astronaut photo) -> train a few steps -> evaluate with dlib."""

import json
import os

import jax
import numpy as np
import pytest

from tests import helpers
from video_dit import train
from video_dit.data import builders, real_video
from video_dit.evaluation import evaluate

pytest.importorskip("dlib")
pytest.importorskip("skimage")


@pytest.mark.slow
def test_folder_dataset_trains_and_evaluates_with_dlib(tmp_path):
  report = real_video.build_two_people(str(tmp_path))
  assert report["built"] == {"train": 4} and not report["skipped"]
  source = builders.data_source(str(tmp_path / "data"), "train")
  assert {int(source[i]["identity_index"]) for i in range(4)} == {-1}  # no synthetic ids
  config = helpers.runlocal_config(**{
      "data.dataset": "video_folder", "data.data_dir": str(tmp_path / "data"),
      "data.frames": 8, "data.height": 64, "data.width": 64, "data.stride": 2,
      "identity.face_size": 64, "sample.num_steps": 2})
  config.total_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "run"), jax.devices()[:1])
  results = evaluate.evaluate(str(tmp_path / "run"), split="train", num_videos=4,
                              metrics=("fvd", "identity", "temporal", "cost"), num_gifs=0,
                              log=lambda *_: None)
  with open(results["path"]) as f:
    saved = json.load(f)
  assert saved["identity"] == json.loads(json.dumps(results["identity"]))
  ident = saved["identity"]
  assert ident["embedding"].startswith("dlib")
  assert ident["identities"] == 2
  real = ident["real"]  # real clips against their own and the other person's reference
  assert real["references_without_face"] == 0 and real["frames"] == 4 * 8
  assert real["n"] >= 3 and real["frames_without_face"] < 16, real
  assert real["choice_accuracy"] >= 2 / 3 and real["gap"] > 0, real
  assert "frames_without_face" in ident["generated"]  # scored, or skipped with the count
  assert np.isfinite(saved["fvd"]["fvd"]) and saved["fvd"]["num_real"] == 4
  assert saved["temporal"]["real"]["frame_change"] > 0
  assert saved["cost"]["video_seconds_per_sample"] == pytest.approx(8 / config.sample.fps)
  assert os.path.exists(os.path.join(saved["media"], "videos.npz"))
