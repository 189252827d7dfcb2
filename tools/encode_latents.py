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

import glob
import json
import os
import shutil

from absl import app
from absl import flags
import jax
import numpy as np

from video_dit import latents
from video_dit.data import builders, pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("vae_workdir", None, "A trained VAE's workdir (checkpoints + latent stats).")
flags.DEFINE_string("data_dir", None, "The source dataset (TFDS data_dir).")
flags.DEFINE_string("out", None, "Where the cache is built (a TFDS data_dir).")
flags.DEFINE_integer("frames", 0, "Frames per clip (1 + a multiple of the VAE's time "
                     "factor); 0 = the VAE's training config.")
flags.DEFINE_integer("resolution", 0, "Frame side; 0 = the VAE's training config.")
flags.DEFINE_integer("batch", 16, "Clips encoded at a time.")

INFO_FILE = "latents.json"


def encode_dataset(vae_workdir: str, data_dir: str, out: str, frames: int = 0,
                   resolution: int = 0, batch: int = 16) -> dict:
  """Builds (or reuses) the cache; returns its description (also in OUT/.../latents.json)."""
  codec = latents.LatentCodec(vae_workdir)
  vc = codec.config
  frames = frames or vc.data.frames
  height, width = resolution or vc.data.height, resolution or vc.data.width
  shape = codec.latent_shape((frames, height, width, 3))  # raises when it does not fit
  def encode(records):
    clips = np.stack([pipeline.centre_clip(r, frames, height, width) for r in records])
    return np.asarray(jax.device_get(codec.encode(clips)))

  tag = f"{frames}f_{height}x{width}_vae{codec.step}_{codec.digest[:12]}"
  builder = builders.LatentCache(data_dir=out, source_dir=data_dir, encode=encode, tag=tag,
                                 batch=batch)
  existed = builder.is_prepared()
  report = builder.prepare()
  path = builder.data_path
  for store in glob.glob(os.path.join(builders.find_dataset(data_dir), "text_*.npz")):
    target = os.path.join(path, os.path.basename(store))
    if not os.path.exists(target):
      shutil.copyfile(store, target + ".tmp")
      os.replace(target + ".tmp", target)
  info = dict(vae_workdir=os.path.abspath(vae_workdir), vae_step=codec.step,
              vae_digest=codec.digest, source=os.path.abspath(data_dir), frames=frames,
              height=height, width=width, latent_shape=list(shape), path=str(path),
              records={k: v.num_examples for k, v in builder.info.splits.items()},
              reused=existed, skipped=len(report["skipped"]))
  tmp = os.path.join(path, INFO_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(info, f, indent=2)
  os.replace(tmp, os.path.join(path, INFO_FILE))
  return info


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("vae_workdir", "data_dir", "out"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required")
  info = encode_dataset(FLAGS.vae_workdir, FLAGS.data_dir, FLAGS.out, FLAGS.frames,
                        FLAGS.resolution, FLAGS.batch)
  print(json.dumps(info, indent=2))
  print(f"train a DiT on it: --config.latent.source=cache --config.data.data_dir={FLAGS.out} "
        f"--config.latent.shape='{tuple(info['latent_shape'])}'")


if __name__ == "__main__":
  app.run(main)
