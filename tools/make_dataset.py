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

import collections
import sys

from absl import app
from absl import flags

from video_dit.data import builders, synthetic, text_store

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


def build(command: str) -> dict:
  """Builds the dataset that the flags describe; returns the report."""
  if command == "synthetic":
    spec = synthetic.SyntheticSpec(
        num_identities=FLAGS.num_identities, clips_per_identity=FLAGS.clips_per_identity,
        frames=FLAGS.frames, height=FLAGS.resolution, width=FLAGS.resolution,
        face_size=FLAGS.face_size or FLAGS.resolution, test_fraction=FLAGS.test_fraction,
        seed=FLAGS.seed)
    builder = builders.SyntheticFaces(data_dir=FLAGS.data_dir, spec=spec)
  else:
    if not FLAGS.manifest:
      raise app.UsageError("folder needs --manifest=path/to/manifest.jsonl")
    options = builders.FolderOptions(
        min_frames=FLAGS.min_frames, max_side=FLAGS.max_side,
        face_size=FLAGS.face_size or 128, test_fraction=FLAGS.test_fraction,
        allow_missing_consent=FLAGS.allow_missing_consent)
    builder = builders.VideoFolder(data_dir=FLAGS.data_dir, manifest=FLAGS.manifest,
                                   options=options)
  existed = builder.is_prepared()
  report = builder.prepare()
  report["path"] = builder.data_path
  report["existed"] = existed
  if existed:  # nothing was rebuilt: count what is there
    report["built"] = collections.Counter(
        {split: info.num_examples for split, info in builder.info.splits.items()})
  return report


def summarize(report: dict) -> str:
  lines = [f"dataset: {report['path']}" + ("  (already built; reused)" if report["existed"]
                                           else "")]
  built = report["built"]
  lines.append(f"built: {sum(built.values())} records ("
               + ", ".join(f"{k} {v}" for k, v in sorted(built.items())) + ")")
  skipped = report["skipped"]
  lines.append(f"skipped: {len(skipped)} records")
  reasons = collections.Counter(s["reason"].split(" (")[0] for s in skipped)
  for s in skipped:
    lines.append(f"  {s['record']}: {s['reason']}")
  if len(reasons) > 1:
    lines.append("by reason: " + "; ".join(f"{n} x {r}" for r, n in reasons.most_common()))
  return "\n".join(lines)


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m tools.make_dataset {{{'|'.join(COMMANDS)}}} "
                         "--data_dir=D [flags]")
  if not FLAGS.data_dir:
    raise app.UsageError("--data_dir is required")
  if argv[1] == "embed" and not FLAGS.text_encoder:
    raise app.UsageError("embed needs --text_encoder=minilm")
  if argv[1] != "embed":
    report = build(argv[1])
    print(summarize(report))
    if not sum(report["built"].values()):
      print("nothing could be built", file=sys.stderr)
      sys.exit(1)
  if FLAGS.text_encoder:
    path = text_store.build(FLAGS.data_dir, FLAGS.text_encoder, FLAGS.text_max_len,
                            force=argv[1] == "embed")
    print(f"caption embeddings ({FLAGS.text_encoder}, {FLAGS.text_max_len} tokens): {path}")


if __name__ == "__main__":
  app.run(main)
