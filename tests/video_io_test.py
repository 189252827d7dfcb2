"""Reading a window of a long video: seek to it, stop after it, nothing else decoded."""

import numpy as np
import pytest

from video_dit import video_io


def _numbered_video(path, frames: int, fps: float = 10.0):
  """A clip whose frame i is black with a white 8x8 square at grid cell i (of 16x16)."""
  video = np.zeros((frames, 128, 128, 3), np.uint8)
  for i in range(frames):
    r, c = divmod(i, 16)
    video[i, 8 * r:8 * r + 8, 8 * c:8 * c + 8] = 255
  video_io.write_video(str(path), video, fps)
  return str(path)


def _indices(frames):
  cells = frames.mean(-1).reshape(len(frames), 16, 8, 16, 8).mean((2, 4))
  return cells.reshape(len(frames), -1).argmax(1)


def test_read_video_decodes_only_the_window(tmp_path, monkeypatch):
  path = _numbered_video(tmp_path / "long.mp4", 120)
  whole, fps = video_io.read_video(path)
  assert fps == pytest.approx(10.0) and list(_indices(whole)) == list(range(120))
  frames, _, t0 = video_io.read_video(path, start=6.0, end=8.0, with_time=True)
  assert list(_indices(frames)) == list(range(60, 80)) and t0 == pytest.approx(6.0)
  # Bounded: frames past the window are never converted, frames before it only from the
  # keyframe the seek lands on.
  import av  # pylint: disable=g-import-not-at-top
  converted = []
  to_image = av.VideoFrame.to_image
  monkeypatch.setattr(av.VideoFrame, "to_image",
                      lambda self, *a, **k: converted.append(1) or to_image(self, *a, **k))
  video_io.read_video(path, start=10.0, end=10.5)
  assert len(converted) == 5
  with pytest.raises(ValueError, match="no frames"):
    video_io.read_video(path, start=20.0, end=21.0)
