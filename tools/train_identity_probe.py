r"""Trains the synthetic-faces probes that evaluation scores generated videos with.

  python -m tools.train_identity_probe --config=configs/synthetic_faces.py[:args] \
      [--kinds=identity,action] [--steps=N] [--out=DIR]

Both probes learn from fresh ground-truth renders of the config's *training*
identities only and are scored on its held-out ones: the identity probe by ROC
AUC of reference-vs-clip verification (its similarities count only at
>= 0.95), the action probe by accuracy. Saved (npz + json) under
data.data_dir/probes/ unless --out is given; evaluation finds them there.
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from video_dit import cli
from video_dit.evaluation import probes

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_KINDS = flags.DEFINE_list("kinds", ["identity", "action"], "Which probes: identity, action.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps; default per kind.")
_OUT = flags.DEFINE_string("out", None, "Folder for the probes (default data_dir/probes).")
_SEED = flags.DEFINE_integer("seed", 0, "Probe training seed.")


def main(argv):
  cli.setup(argv)
  config = _CONFIG.value
  if config.data.dataset != "synthetic_faces":
    raise app.UsageError(f"probes are for the synthetic_faces dataset, not "
                         f"'{config.data.dataset}'; real faces are scored with dlib")
  spec = probes.ProbeSpec.from_config(config)
  for kind in _KINDS.value:
    if kind not in ("identity", "action"):
      raise app.UsageError(f"--kinds has '{kind}'; use identity and/or action")
  for kind in _KINDS.value:
    probe = probes.train_probe(kind, spec, steps=_STEPS.value, seed=_SEED.value)
    path = (os.path.join(_OUT.value, kind) if _OUT.value else
            probes.default_path(config.data.data_dir, kind, spec))
    probe.save(path)
    print(json.dumps({"probe": kind, "path": path, "verified": probe.verified, **probe.scores}))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
