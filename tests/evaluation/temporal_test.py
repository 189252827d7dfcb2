import numpy as np
import pytest

from video_dit.data import synthetic
from video_dit.evaluation import temporal


def test_still_clips_score_zero_and_motion_scores_more():
  spec = synthetic.SyntheticSpec(frames=8, height=32, width=32, face_size=32)
  clip = synthetic.make_example(spec, 0, 0)["video"]
  still = np.repeat(clip[:1], 8, axis=0)
  const = np.tile(np.array([[1.0, 0.0, 0.0]]), (8, 1))
  assert temporal.summary([still], [const]) == dict(embedding_variance=0.0,
                                                    frame_change=0.0, drift=0.0)
  assert temporal.frame_change(clip) > 0.001
  noise = np.random.default_rng(0).integers(0, 256, clip.shape, dtype=np.uint8)
  assert temporal.frame_change(noise) > 10 * temporal.frame_change(clip)  # flicker
  # uint8 and [-1, 1] inputs agree.
  assert temporal.frame_change(clip) == pytest.approx(
      temporal.frame_change(clip / 127.5 - 1.0), rel=1e-9)


def test_embedding_drift_and_variance():
  angles = np.linspace(0, np.pi / 2, 8)
  turning = np.stack([np.cos(angles), np.sin(angles)], -1)  # rotates by 90 degrees
  assert temporal.drift(turning) == pytest.approx(1.0)
  assert temporal.embedding_variance(turning) > temporal.embedding_variance(turning[:2]) > 0
  with pytest.raises(ValueError, match="at least 2 frames"):
    temporal.frame_change(np.zeros((1, 4, 4, 3), np.uint8))


def test_summary_averages_frames_over_all_clips_and_embeddings_over_those_given():
  rng = np.random.default_rng(0)
  clips = [rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8) for _ in range(3)]
  angles = np.linspace(0, np.pi / 2, 4)
  turning = np.stack([np.cos(angles), np.sin(angles)], -1)
  # Embeddings for two clips only (e.g. faces found in two), one of them a single frame.
  s = temporal.summary(clips, [turning, turning[:1]])
  assert s["frame_change"] == pytest.approx(np.mean([temporal.frame_change(c) for c in clips]))
  assert s["drift"] == pytest.approx(1.0)  # the single-frame clip is left out
  assert s["embedding_variance"] == pytest.approx(temporal.embedding_variance(turning))
  assert set(temporal.summary(clips)) == {"frame_change"}
