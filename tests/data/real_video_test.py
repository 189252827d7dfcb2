import numpy as np
import pytest

from tools import real_video_example


@pytest.mark.slow
def test_carphone_clip_builds_and_reads(tmp_path):
  r = real_video_example.run(str(tmp_path), batches=1)
  assert r["report"]["built"] == {"train": 2} and not r["report"]["skipped"]
  b = r["batch_arrays"]
  assert b["video"].shape == (4, 16, 64, 64, 3) and b["face"].shape == (4, 64, 64, 3)
  # A real, textured clip: not flat, and the detected face crop is not a blank image.
  assert b["video"].std() > 0.2 and b["face"].std(axis=(1, 2, 3)).min() > 0.1
  assert np.all((b["text_ids"] > 0).sum(1) >= 6)
