r"""Lists a workdir's checkpoints, the parameter tree and a stable parameter digest.

  python -m tools.inspect_checkpoint --workdir=W [--step=N] [--digest]
"""

from absl import app
from absl import flags
import jax
import numpy as np

from video_dit import checkpoint, cli, workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_STEP = flags.DEFINE_integer("step", None, "Step to inspect; default: the latest.")
_DIGEST = flags.DEFINE_bool("digest", False, "Print only the parameter digest.")


def main(argv):
  cli.setup(argv)
  step = workdir.resolve_step(_WORKDIR.value, _STEP.value)
  directory = workdir.checkpoint_dir(_WORKDIR.value)
  _, state = checkpoint.load_host(directory, step)
  params = state["params"]
  if _DIGEST.value:
    print(checkpoint.digest(params))
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
  app.run(main)
