r"""Reads the provenance embedded in a generated video or image and checks it against
the sample's sidecar json.

  python -m tools.provenance samples/sample_000_seed0.mp4   # or .gif / .png

Prints the embedded record; exits 1 when the file carries none, or when it differs from
``<prefix>.json`` beside it (0 when they agree, or with --no_sidecar).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

from video_dit import cli, provenance

_NO_SIDECAR = flags.DEFINE_bool("no_sidecar", False, "Only print what the file carries.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m tools.provenance FILE (.mp4, .gif or .png)")
  cli.setup(argv[:1])
  path = argv[1]
  try:
    embedded = provenance.read(path)
  except ValueError as e:
    sys.exit(f"error: {path}: {e}" if path not in str(e) else f"error: {e}")
  print(json.dumps(embedded, indent=2))
  if _NO_SIDECAR.value:
    return
  sidecar = os.path.splitext(path)[0] + ".json"
  if not os.path.exists(sidecar):
    sys.exit(f"error: {path}: no sidecar {sidecar} to check against (--no_sidecar to skip)")
  try:
    with open(sidecar, encoding="utf-8") as f:
      expected = json.load(f)
  except ValueError as e:
    sys.exit(f"error: the sidecar {sidecar} is not valid JSON ({e})")
  diff = sorted(k for k in set(expected) | set(embedded) if expected.get(k) != embedded.get(k))
  if diff:
    sys.exit(f"error: {path}: differs from {sidecar} in {diff}")
  print(f"{path}: matches {sidecar}")


if __name__ == "__main__":
  cli.run(main)
