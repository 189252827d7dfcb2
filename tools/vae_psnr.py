r"""PSNR of a trained video VAE's reconstructions (posterior mean -> decode).

  python -m tools.vae_psnr --vae_workdir=runs/vae --data_dir=data/synthetic_faces_latent
  python -m tools.vae_psnr --vae_workdir=runs/vae --video=clip.mp4 --frames=17

Held-out clips of a dataset (split 'test', the eval pipeline's first frames, centre crop,
at the VAE's training size) and/or a video file (its first --frames frames, cropped to a
multiple of the spatial factor; the VAE is fully convolutional). Prints JSON lines.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import jax
import numpy as np

from video_dit import latents, video_io
from video_dit.data import builders, pipeline
from video_dit.models import autoencoder

FLAGS = flags.FLAGS
flags.DEFINE_string("vae_workdir", None, "A trained VAE's workdir.")
flags.DEFINE_string("data_dir", None, "Dataset whose 'test' split is reconstructed.")
flags.DEFINE_integer("num_clips", 64, "Clips of the dataset.")
flags.DEFINE_string("video", None, "A video file to reconstruct.")
flags.DEFINE_integer("frames", 0, "Frames of --video (1 + a multiple of the time factor); "
                     "0 = the VAE's training frames.")


def reconstruct(codec: latents.LatentCodec, video_bthwc: np.ndarray) -> np.ndarray:
  return np.asarray(jax.device_get(codec.decode(codec.encode(video_bthwc))))


def dataset_psnr(codec, data_dir: str, num_clips: int) -> dict:
  d = codec.config.data
  source = builders.data_source(data_dir, "test")
  values = []
  for start in range(0, min(num_clips, len(source)), 8):
    clips = np.stack([pipeline.centre_clip(source[i], d.frames, d.height, d.width)
                      for i in range(start, min(start + 8, num_clips, len(source)))])
    values += np.asarray(autoencoder.psnr(reconstruct(codec, clips), clips)).tolist()
  return dict(what="dataset", data_dir=data_dir, clips=len(values), shape=list(clips.shape[1:]),
              psnr_db=float(np.mean(values)), psnr_db_min=float(np.min(values)))


def video_psnr(codec, path: str, frames: int) -> dict:
  frames = frames or codec.config.data.frames
  video, _ = video_io.read_video(path)
  s = codec.cfg.space_factor
  h, w = video.shape[1] // s * s, video.shape[2] // s * s
  clip = video[:frames, :h, :w].astype(np.float32)[None] / 127.5 - 1.0
  codec.latent_shape(clip.shape[1:])  # raises when the frame count does not fit
  value = float(np.asarray(autoencoder.psnr(reconstruct(codec, clip), clip))[0])
  return dict(what="video", video=path, shape=list(clip.shape[1:]), psnr_db=value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.vae_workdir or not (FLAGS.data_dir or FLAGS.video):
    raise app.UsageError("--vae_workdir and --data_dir and/or --video are required")
  codec = latents.LatentCodec(FLAGS.vae_workdir)
  info = dict(vae_workdir=FLAGS.vae_workdir, step=codec.step)
  if FLAGS.data_dir:
    print(json.dumps(dict(info, **dataset_psnr(codec, FLAGS.data_dir, FLAGS.num_clips))))
  if FLAGS.video:
    print(json.dumps(dict(info, **video_psnr(codec, FLAGS.video, FLAGS.frames))))


if __name__ == "__main__":
  app.run(main)
