r"""Lists a workdir's checkpoints, the parameter tree and stable digests; verifies them.

  python -m tools.inspect_checkpoint --workdir=W [--step=N] [--digest [--ema]]
  python -m tools.inspect_checkpoint --workdir=W --verify   # every step against its digests

--verify exits 1 when a checkpoint cannot be read or differs from the digests saved
with it, naming the step and the item.
"""

import sys

from absl import flags
import jax
import numpy as np

from video_dit import checkpoint, cli, workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_STEP = flags.DEFINE_integer("step", None, "Step to inspect; default: the latest.")
_DIGEST = flags.DEFINE_bool("digest", False, "Print only the parameter digest.")
_EMA = flags.DEFINE_bool("ema", False, "With --digest: the EMA parameters' digest (what "
                         "sampling uses by default and records in its provenance).")
_VERIFY = flags.DEFINE_bool("verify", False,
                            "Check every step against the digests saved with it.")


def verify_all(workdir_path: str) -> bool:
  """Prints one line per step; True when every step verifies."""
  directory = workdir.checkpoint_dir(workdir_path)
  good = True
  for step in workdir.steps(workdir_path):
    try:
      checkpoint.load_host(directory, step)
      print(f"step {step}: ok")
    except checkpoint.CorruptCheckpoint as e:
      print(f"step {step}: CORRUPT: {e}")
      good = False
  return good


def main(argv):
  cli.setup(argv)
  if _VERIFY.value:
    workdir.resolve_step(_WORKDIR.value)  # a clear error when there is nothing to verify
    sys.exit(0 if verify_all(_WORKDIR.value) else 1)
  step = workdir.resolve_step(_WORKDIR.value, _STEP.value)
  directory = workdir.checkpoint_dir(_WORKDIR.value)
  _, state = checkpoint.load_host(directory, step)
  params = state["params"]
  if _DIGEST.value:
    print(checkpoint.digest(state["ema_params"] if _EMA.value else params))
    return
  print(f"checkpoints in {directory}: {checkpoint.steps(directory)}")
  print(f"step {step}: params digest {checkpoint.digest(params)}, "
        f"EMA digest {checkpoint.digest(state['ema_params'])}")
  total = 0
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    x = np.asarray(x)
    total += x.size
    print(f"  {checkpoint.path_str(path):60s} {str(x.shape):18s} {x.dtype}")
  print(f"{total:,} parameters")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
