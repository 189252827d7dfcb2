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


def test_seams_find_the_token_grid_and_not_smooth_video():
  """A clip painted token by token in flat colours has all its change at token borders;
  a smooth gradient that moves a little every frame has none there in particular."""
  rng = np.random.default_rng(0)
  blocks = rng.uniform(0, 1, (4, 2, 4, 4, 3))  # (N, T', H', W', C) token colours
  tokenised = np.repeat(np.repeat(np.repeat(blocks, 2, 1), 8, 2), 8, 3)  # tubelet 2x8x8
  s = temporal.seams(tokenised * 2 - 1, (2, 8, 8))
  assert s["spatial"] > 100 and s["temporal"] > 100
  y, x = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  smooth = np.stack([np.stack([np.sin((x + 0.7 * f) / 6.0) * np.cos(y / 9.0)] * 3, -1)
                     for f in range(4)])[None]
  s = temporal.seams(np.clip(smooth, -1, 1), (2, 8, 8))
  assert abs(s["spatial"] - 1) < 0.2 and abs(s["temporal"] - 1) < 0.2, s
  # Through summary, with the pixel tubelet; none without one, no temporal when pt=1.
  summary = temporal.summary(list(tokenised * 2 - 1), tubelet=(2, 8, 8))
  assert summary["seams"] == pytest.approx(temporal.seams(tokenised * 2 - 1, (2, 8, 8)))
  assert set(temporal.seams(tokenised, (1, 8, 8))) == {"spatial"}
