"""Face detection and cropping for reference faces.

Detection uses OpenCV's shipped frontal-face Haar cascade (opencv-python-headless,
an optional extra: ``pip install -e .[faces]``), imported only when needed.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=1)
def _cascade():
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("face detection needs OpenCV: pip install 'opencv-python-headless<5' "
                      "(or pip install -e .[faces]); or give a face image per record") from e
  cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
  if cascade.empty():
    raise RuntimeError("OpenCV's haarcascade_frontalface_default.xml could not be loaded")
  return cv2, cascade


def detect_faces(image_hwc: np.ndarray) -> list[tuple[int, int, int, int]]:
  """(x, y, w, h) boxes of frontal faces, largest first."""
  cv2, cascade = _cascade()
  gray = cv2.cvtColor(np.ascontiguousarray(image_hwc), cv2.COLOR_RGB2GRAY)
  side = min(gray.shape)
  boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                   minSize=(max(12, side // 10),) * 2)
  return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: -b[2] * b[3])


def square_resize(image_hwc: np.ndarray, size: int) -> np.ndarray:
  """Centre square crop, resized to (size, size, 3)."""
  h, w = image_hwc.shape[:2]
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  crop = Image.fromarray(image_hwc[top:top + s, left:left + s])
  return np.asarray(crop.resize((size, size), Image.BICUBIC))


def crop_face(image_hwc: np.ndarray, box, size: int, margin: float = 1.6) -> np.ndarray:
  """A square crop ``margin`` times the detected box around its centre (edge-padded)."""
  x, y, w, h = box
  cx, cy, half = x + w / 2, y + h / 2, max(w, h) * margin / 2
  img = Image.fromarray(image_hwc)
  left, top = int(round(cx - half)), int(round(cy - half))
  side = int(round(2 * half))
  pad = max(0, -left, -top, left + side - img.width, top + side - img.height)
  if pad:
    arr = np.pad(image_hwc, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    img, left, top = Image.fromarray(arr), left + pad, top + pad
  return np.asarray(img.crop((left, top, left + side, top + side)).resize((size, size),
                                                                            Image.BICUBIC))


def crop_face_from_frames(frames_thwc: np.ndarray, size: int,
                          max_tries: int = 8) -> np.ndarray | None:
  """The largest face in up to ``max_tries`` evenly spaced frames, or None."""
  if not len(frames_thwc):
    return None
  for i in np.unique(np.linspace(0, len(frames_thwc) - 1, max_tries).astype(int)):
    boxes = detect_faces(frames_thwc[i])
    if boxes:
      return crop_face(frames_thwc[i], boxes[0], size)
  return None
