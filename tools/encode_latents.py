r"""Encodes a dataset once with a trained video VAE into an ArrayRecord latent cache.

  python -m tools.encode_latents --vae_workdir=runs/vae --data_dir=data/synthetic_faces \
      --out=data/synthetic_faces_latents [--frames=9 --resolution=64]

Every record keeps its source features (frames, reference face, caption, identity,
action) and gains the normalised latents ((z - shift) / scale with the VAE's stored
statistics) of its first ``--frames`` frames at ``--resolution`` (centre crop). Stored
caption embeddings (text_*.npz) are copied along. A DiT trains on it with
``latent.source='cache'`` and ``data.data_dir=OUT``; ``latent.shape`` is printed.
"""

from __future__ import annotations

import json

from absl import flags

from video_dit import cli, latents

FLAGS = flags.FLAGS
flags.DEFINE_string("vae_workdir", None, "A trained VAE's workdir (checkpoints + latent stats).")
flags.DEFINE_string("data_dir", None, "The source dataset (TFDS data_dir).")
flags.DEFINE_string("out", None, "Where the cache is built (a TFDS data_dir).")
flags.DEFINE_integer("frames", 0, "Frames per clip (1 + a multiple of the VAE's time "
                     "factor); 0 = the VAE's training config.")
flags.DEFINE_integer("resolution", 0, "Frame side; 0 = the VAE's training config.")
flags.DEFINE_integer("batch", 16, "Clips encoded at a time.")


def main(argv):
  cli.setup(argv)
  info = latents.encode_dataset(FLAGS.vae_workdir, FLAGS.data_dir, FLAGS.out, FLAGS.frames,
                                FLAGS.resolution, FLAGS.batch)
  print(json.dumps(info, indent=2))
  print(f"train a DiT on it: --config.latent.source=cache --config.data.data_dir={FLAGS.out} "
        f"--config.latent.shape='{tuple(info['latent_shape'])}'")


if __name__ == "__main__":
  flags.mark_flags_as_required(["vae_workdir", "data_dir", "out"])
  cli.run(main)
