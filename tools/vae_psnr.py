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

from video_dit import cli, latents, workdir

FLAGS = flags.FLAGS
flags.DEFINE_string("vae_workdir", None, "A trained VAE's workdir.")
flags.DEFINE_string("data_dir", None, "Dataset whose 'test' split is reconstructed.")
flags.DEFINE_integer("num_clips", 64, "Clips of the dataset.")
flags.DEFINE_string("video", None, "A video file to reconstruct.")
flags.DEFINE_integer("frames", 0, "Frames of --video (1 + a multiple of the time factor); "
                     "0 = the VAE's training frames.")


def main(argv):
  cli.setup(argv)
  if not FLAGS.data_dir and not FLAGS.video:
    raise app.UsageError("--data_dir and/or --video is required: what to reconstruct")
  codec = workdir.LatentCodec(FLAGS.vae_workdir)
  info = dict(vae_workdir=FLAGS.vae_workdir, step=codec.step)
  if FLAGS.data_dir:
    print(json.dumps(dict(info, **latents.dataset_psnr(codec, FLAGS.data_dir, FLAGS.num_clips))))
  if FLAGS.video:
    print(json.dumps(dict(info, **latents.video_psnr(codec, FLAGS.video, FLAGS.frames))))


if __name__ == "__main__":
  flags.mark_flags_as_required(["vae_workdir"])
  cli.run(main)
