"""Identity-consistent video DiT on the built-in synthetic faces, in pixel space.

Launch (full size, 16x64x64 clips, DiT-S, tubelet 2x4x4 = 2048 tokens):
  python -m experiments.train --config=configs/synthetic_faces.py --workdir=runs/faces
Variants: --config=configs/synthetic_faces.py:variant=B,frames=32,res=128,patch=2x8x8
Laptop / tests (DiT-mu, 8x32x32 clips, 64 tokens):
  --config=configs/synthetic_faces.py:runlocal
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="S", frames=16, res=64, patch="2x4x4", runlocal=False)
  config = common.base_config()
  common.set_size(config, arg.variant)
  config.model.patch = common.parse_patch(arg.patch)
  config.data.update(frames=arg.frames, height=arg.res, width=arg.res)
  if arg.runlocal:
    common.runlocal(config)
  config.lock()
  return config
