r"""Forgets a person: removes an identity from every dataset, latent cache, caption store,
codec and probe under a data folder, and lists the checkpoints trained on them.

  python -m tools.forget_identity --identity=p017 --data_dir=data [--workdirs=runs/a,runs/b]
  python -m tools.forget_identity --identity=p017 --data_dir=data --dry_run

Each dataset holding the identity's records is rebuilt without them and swapped in
atomically; stored caption embeddings keep only the captions that remain; PCA codecs and
probes fitted on the old records are deleted (refitted on next use). The entry appended
to DATA_DIR/forget_audit.jsonl says what was removed, when, and the content digests of
each dataset before and after. Checkpoints are listed, not deleted: a listed checkpoint
was trained on the person (retrain or delete it).
"""

import json

from absl import flags

from video_dit import cli
from video_dit.data import forget

_IDENTITY = flags.DEFINE_string("identity", None, "The identity name in the records.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The folder of datasets to clean.")
_WORKDIRS = flags.DEFINE_list("workdirs", [], "Training workdirs whose checkpoints to check.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Report what would be removed; change nothing.")


def main(argv):
  cli.setup(argv)
  entry = forget.forget(_DATA_DIR.value, _IDENTITY.value, _DRY_RUN.value, _WORKDIRS.value)
  print(json.dumps(entry, indent=1))
  if not entry["datasets"]:
    print(f"identity '{_IDENTITY.value}' has no records under {_DATA_DIR.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["identity", "data_dir"])
  cli.run(main)
