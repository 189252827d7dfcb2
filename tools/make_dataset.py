r"""Builds a face-video triad dataset (TFDS, ArrayRecord shards).

  python -m tools.make_dataset synthetic --data_dir=data/synthetic_faces \
      [--num_identities=200 --clips_per_identity=8 --frames=16 --resolution=64]
  python -m tools.make_dataset folder --manifest=M.jsonl --data_dir=data/my_clips \
      [--min_frames=16 --max_side=256 --allow_missing_consent]
  python -m tools.make_dataset embed --data_dir=D --text_encoder=minilm

--text_encoder=minilm (with any command) stores every caption's MiniLM token embeddings,
mask and pooled vector in the dataset folder (text_minilm.npz), for
text.encoder='precomputed'.

Prints a closing summary: records built per split, records skipped and why.
Exit status is non-zero only when nothing could be built.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from video_dit import cli
from video_dit.data import build, text_store

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data_dir to build into.")
# synthetic
flags.DEFINE_integer("num_identities", 200, "synthetic: identities (train + test).")
flags.DEFINE_integer("clips_per_identity", 8, "synthetic: clips per identity.")
flags.DEFINE_integer("frames", 16, "synthetic: frames per clip (8..64).")
flags.DEFINE_integer("resolution", 64, "synthetic: frame side (32..256).")
flags.DEFINE_integer("face_size", 0, "reference face side; 0 = resolution (synthetic) or 128.")
flags.DEFINE_float("test_fraction", 0.2, "fraction of identities held out for 'test'.")
flags.DEFINE_integer("seed", 0, "synthetic: seed.")
# folder
flags.DEFINE_string("manifest", None, "folder: manifest.jsonl (paths relative to it).")
flags.DEFINE_integer("min_frames", 8, "folder: skip clips with fewer frames.")
flags.DEFINE_integer("max_side", 256, "folder: stored frames' longer side at most.")
flags.DEFINE_bool("allow_missing_consent", False, "folder: build records without consent.")

flags.DEFINE_enum("text_encoder", "", ["", "minilm"],
                  "also store every caption's embeddings of this frozen encoder "
                  "(text.encoder='precomputed' reads them); the 'embed' command adds them "
                  "to a dataset that exists.")
flags.DEFINE_integer("text_max_len", 32, "tokens per stored caption (= text.max_len).")

COMMANDS = ("synthetic", "folder", "embed")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m tools.make_dataset {{{'|'.join(COMMANDS)}}} "
                         "--data_dir=D [flags]")
  cli.setup(argv[:1])
  command = argv[1]
  if command == "embed" and not FLAGS.text_encoder:
    raise app.UsageError("embed needs --text_encoder=minilm")
  if command == "folder" and not FLAGS.manifest:
    raise app.UsageError("folder needs --manifest=path/to/manifest.jsonl")
  if command == "synthetic":
    report = build.synthetic_faces(
        FLAGS.data_dir, num_identities=FLAGS.num_identities,
        clips_per_identity=FLAGS.clips_per_identity, frames=FLAGS.frames,
        resolution=FLAGS.resolution, face_size=FLAGS.face_size,
        test_fraction=FLAGS.test_fraction, seed=FLAGS.seed)
  elif command == "folder":
    report = build.video_folder(
        FLAGS.data_dir, FLAGS.manifest, min_frames=FLAGS.min_frames, max_side=FLAGS.max_side,
        face_size=FLAGS.face_size, test_fraction=FLAGS.test_fraction,
        allow_missing_consent=FLAGS.allow_missing_consent)
  if command != "embed":
    print(build.summarize(report))
    if not sum(report["built"].values()):
      print("nothing could be built", file=sys.stderr)
      sys.exit(1)
  if FLAGS.text_encoder:
    path = text_store.build(FLAGS.data_dir, FLAGS.text_encoder, FLAGS.text_max_len,
                            force=command == "embed")
    print(f"caption embeddings ({FLAGS.text_encoder}, {FLAGS.text_max_len} tokens): {path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["data_dir"])
  cli.run(main)
