"""The two performance workloads of ``tools.benchmark`` (random data; no dataset needed).

  workload=image  DiT-S/2 on a 32x32x4 latent image (T=1), batch 8: 256 tokens,
                  the standard point of comparison with the reference DiT.
  workload=video  16 latent frames of 32x32x4, patch (1, 2, 2), batch 2: 4096 tokens of
                  full spacetime attention.

Attention defaults to einsum for the image and blocked (flash attention in plain JAX,
memory linear in tokens) for the video. Text and identity conditioning are off
(``cond=true`` switches them on) so the work is the DiT's alone. Overridable: variant, batch, frames, res, channels, patch, dtype,
matmul (bfloat16: bf16 matmul inputs, f32 accumulation; auto: probed),
attention, layout (full | factorised: Latte-style spatial/temporal blocks), remat, scan,
and runlocal for tests.

  python -m tools.benchmark --config=configs/bench.py:workload=video,dtype=bfloat16
"""

from configs import common

WORKLOADS = {
    "image": dict(frames=1, batch=8, patch="1x2x2", attention="einsum"),
    "video": dict(frames=16, batch=2, patch="1x2x2", attention="blocked"),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, workload="image", variant="S", batch=0, frames=0, res=32,
                         channels=4, patch="", dtype="float32", matmul="", attention="",
                         remat="none", scan=False, cond=False, layout="full", runlocal=False)
  if arg.workload not in WORKLOADS:
    raise ValueError(f"workload={arg.workload} is unknown; use one of {list(WORKLOADS)}")
  w = WORKLOADS[arg.workload]
  config = common.base_config()
  common.set_size(config, arg.variant)
  config.model.update(patch=common.parse_patch(arg.patch or w["patch"]), channels=arg.channels,
                      dtype=arg.dtype, matmul_dtype=arg.matmul, attention=arg.attention or w["attention"], remat=arg.remat,
                      scan_layers=arg.scan, attention_layout=arg.layout)
  config.data.update(frames=arg.frames or w["frames"], height=arg.res, width=arg.res,
                     batch_size=arg.batch or w["batch"])
  if not arg.cond:
    config.text.encoder = "none"
    config.identity.mode = "none"
  config.optim.warmup_steps = 10
  config.sample.update(num_steps=10, num_videos=1)
  if arg.runlocal:
    common.set_size(config, "mu")
    config.data.update(height=16, width=16, frames=min(config.data.frames, 4))
  config.lock()
  return config
