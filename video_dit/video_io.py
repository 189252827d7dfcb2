"""Video I/O: the compact frame encoding stored in datasets, video files, and the
mp4 / GIF / PNG-strip writers of samples.

Datasets store a clip as a list of per-frame encoded images: PNG (lossless; the
synthetic data, whose flat colours compress well) or JPEG (real video). That is
decodable with PIL alone, seekable per frame (the pipeline decodes only the
frames it samples) and small enough for 10k-clip datasets.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

from video_dit import provenance


def encode_frames(frames_thwc: np.ndarray, fmt: str = "png", quality: int = 90) -> list[bytes]:
  """(T, H, W, 3) uint8 -> one encoded image per frame."""
  if frames_thwc.dtype != np.uint8 or frames_thwc.ndim != 4 or frames_thwc.shape[-1] != 3:
    raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames_thwc.shape} "
                     f"{frames_thwc.dtype}")
  out = []
  for frame in frames_thwc:
    buf = io.BytesIO()
    if fmt == "png":
      Image.fromarray(frame).save(buf, "PNG", compress_level=6)
    elif fmt == "jpeg":
      Image.fromarray(frame).save(buf, "JPEG", quality=quality)
    else:
      raise ValueError(f"frame format '{fmt}' is unknown; use 'png' or 'jpeg'.")
    out.append(buf.getvalue())
  return out


def decode_image(data: bytes) -> np.ndarray:
  """Encoded image bytes -> (H, W, 3) uint8."""
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("RGB"))


def read_image(path: str, what: str, hint: str = "") -> np.ndarray:
  """An image file as (H, W, 3) uint8; an unreadable file and one over PIL's
  decompression-bomb limit are one error naming ``what`` it is (and ``hint``)."""
  try:
    with open(path, "rb") as f:
      return decode_image(f.read())
  except Image.DecompressionBombError as e:
    raise ValueError(f"{what} {path} is too large to decode safely ({e}); use a smaller "
                     "image") from e
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {what} {path}: {e}{hint}") from e


def decode_frames(encoded: Sequence[bytes], indices: Sequence[int] | None = None) -> np.ndarray:
  """Decodes the frames at ``indices`` (all by default) -> (T, H, W, 3) uint8."""
  indices = range(len(encoded)) if indices is None else indices
  return np.stack([decode_image(encoded[i]) for i in indices])


def read_video(path: str, max_side: int = 0, start: float = 0.0, end: float | None = None,
               with_time: bool = False):
  """Decodes the ``[start, end)`` seconds of a video file (any container/codec ffmpeg
  knows) with PyAV: it seeks to the keyframe before ``start`` and stops at ``end``, so
  memory holds the window only, however long the file.

  Returns ((T, H, W, 3) uint8 frames, frames per second) and, ``with_time``, the time
  of the first frame returned. ``max_side`` > 0 downsizes frames so that their longer side is at most that.
  """
  import av  # pylint: disable=g-import-not-at-top

  frames, first_time = [], None
  with av.open(path) as container:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 25)
    half = 0.5 / fps
    if start > 0 and stream.time_base:
      container.seek(int(start / stream.time_base), stream=stream, backward=True)
    for frame in container.decode(stream):
      t = float(frame.time) if frame.time is not None else len(frames) / fps
      if t < start - half:
        continue
      if end is not None and t >= end - half:
        break
      first_time = t if first_time is None else first_time
      img = frame.to_image()
      if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                         Image.BILINEAR)
      frames.append(np.asarray(img.convert("RGB")))
  if not frames:
    raise ValueError(f"no frames could be decoded from {path}"
                     + (f" in [{start:g}, {end:g}) s" if end is not None or start else ""))
  return (np.stack(frames), fps) + ((first_time,) if with_time else ())


def write_video(path: str, frames_thwc: np.ndarray, fps: float = 8.0,
                metadata: dict[str, str] | None = None) -> None:
  """Writes (T, H, W, 3) uint8 frames as H.264 mp4 (sides padded to even) with PyAV;
  ``metadata`` goes into the container's tags (e.g. ``comment``)."""
  import av  # pylint: disable=g-import-not-at-top
  from fractions import Fraction  # pylint: disable=g-import-not-at-top

  h, w = frames_thwc.shape[1:3]
  frames_thwc = np.pad(frames_thwc, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  with av.open(path, "w") as container:
    for key, value in (metadata or {}).items():
      container.metadata[key] = value
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
    stream.width, stream.height = w + w % 2, h + h % 2
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "18"}
    for frame in frames_thwc:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())


def to_unit(x_uint8) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1], the range every model input uses."""
  return np.asarray(x_uint8).astype(np.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
  """[-1, 1] floats -> uint8 (clipped)."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_gif(path: str, video_thwc: np.ndarray, fps: float = 8.0,
              comment: bytes | None = None) -> None:
  """(T, H, W, 3) uint8 frames as a looping GIF (with an optional comment block)."""
  frames = [Image.fromarray(f) for f in video_thwc]
  extra = {"comment": comment} if comment else {}
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps),
                 loop=0, **extra)


def frame_grid(video_thwc: np.ndarray, face_hwc: np.ndarray | None = None) -> np.ndarray:
  """One row: the reference face (resized to the frame height), then every frame."""
  t, h, w, _ = video_thwc.shape
  parts = []
  if face_hwc is not None:
    parts.append(np.asarray(Image.fromarray(face_hwc).resize((h, h), Image.BICUBIC)))
    parts.append(np.full((h, max(2, w // 16), 3), 255, np.uint8))
  parts.extend(video_thwc)
  return np.concatenate(parts, axis=1)


def write_sample(prefix: str, video_thwc: np.ndarray, face_hwc: np.ndarray | None = None,
                 fps: float = 8.0, record: dict | None = None) -> list[str]:
  """Writes ``prefix``.mp4 and ``prefix``.png (face + frames), with the provenance
  ``record`` embedded in both when given; returns the paths."""
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
  write_video(prefix + ".mp4", video_thwc, fps,
              provenance.mp4_metadata(record) if record else None)
  Image.fromarray(frame_grid(video_thwc, face_hwc)).save(
      prefix + ".png", pnginfo=provenance.png_info(record) if record else None)
  return [prefix + ".mp4", prefix + ".png"]
