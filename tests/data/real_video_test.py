import numpy as np
import pytest

from tools import real_video_example
from video_dit.data import pipeline, real_video


@pytest.mark.slow
def test_carphone_clip_builds_and_reads(tmp_path):
  report = real_video.build_carphone(str(tmp_path))
  assert report["built"] == {"train": 2} and not report["skipped"]
  b = next(pipeline.make_iterator(real_video_example.pipeline_config(str(tmp_path))))
  assert b["video"].shape == (4, 16, 64, 64, 3) and b["face"].shape == (4, 64, 64, 3)
  # A real, textured clip: not flat, and the detected face crop is not a blank image.
  assert b["video"].std() > 0.2 and b["face"].std(axis=(1, 2, 3)).min() > 0.1
  assert np.all((b["text_ids"] > 0).sum(1) >= 6)
