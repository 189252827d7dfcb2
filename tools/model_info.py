r"""Builds the model of a config and runs one sharded forward/backward on random video.

The loss is the config's diffusion loss on random "clean" video and conditions.

Prints parameter counts, tokens per clip, FLOPs (XLA's count of the compiled
step and the analytic matmul count), compile and step time, as text and as one
final JSON line.

  python -m tools.model_info --config=configs/synthetic_faces.py:runlocal
  python -m tools.model_info --config=configs/synthetic_faces.py:variant=B \
      --config.mesh.fsdp=-1 --config.mesh.data=1 --batch=8
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from video_dit import sharding
from video_dit.diffusion import Diffusion
from video_dit.models import flops as flops_lib
from video_dit.models import registry

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch; 0 = config.data.batch_size.")


def run(config, batch: int = 0) -> dict:
  """One sharded forward/backward of the config's model; returns the measurements."""
  mesh = sharding.make_mesh(config.mesh)
  model, cfg = registry.build(config)
  batch = batch or config.data.batch_size
  sharding.check_batch(batch, mesh)

  key = jax.random.key(config.seed)
  init_inputs = registry.dummy_inputs(config, 1)
  params, param_shardings = sharding.jit_init(lambda k: model.init(k, **init_inputs), mesh, key)
  shape = registry.video_shape(config)
  diffusion = Diffusion.from_config(config.diffusion, flops_lib.num_tokens(cfg, shape))
  host = registry.random_inputs(config, batch, config.seed)
  del host["t_b"]  # the diffusion loss draws times itself
  data = sharding.shard_batch(host, mesh)

  def loss_fn(p, d):
    cond = {k: v for k, v in d.items() if k != "x_bthwc"}
    model_fn = lambda x, t, c: model.apply(p, x, t, **c)
    return diffusion.loss(model_fn, d["x_bthwc"], cond, jax.random.key(config.seed))[0]

  def step(p, d):
    loss, grads = jax.value_and_grad(loss_fn)(p, d)
    return loss, grads, global_norm(grads)

  data_shardings = jax.tree.map(lambda x: x.sharding, data)
  fwd_bwd = jax.jit(step, in_shardings=(param_shardings, data_shardings),
                    out_shardings=(None, param_shardings, None))
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    compiled = fwd_bwd.lower(params, data).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, data))  # warm-up
    t0 = time.perf_counter()
    loss, _, grad_norm = jax.block_until_ready(compiled(params, data))
    step_s = time.perf_counter() - t0

  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  counts = {name: int(sum(x.size for x in jax.tree.leaves(sub)))
            for name, sub in params["params"].items()}
  return dict(
      mesh=dict(mesh.shape), batch=batch, video_shape=list(shape),
      tokens_per_clip=flops_lib.num_tokens(cfg, shape),
      params=sum(counts.values()), params_by_module=counts,
      # XLA counts the per-device program; summed over devices (replicated work
      # such as the small encoders counts once per device).
      flops_per_step_xla=float(cost.get("flops", float("nan"))) * mesh.size,
      flops_per_step_analytic=3 * batch * flops_lib.forward_flops(cfg, shape,
                                                                 cfg.text.max_len),
      compile_s=compile_s, step_s=step_s, loss=float(loss), grad_norm=float(grad_norm),
      backend=jax.default_backend(), device_count=jax.device_count())


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def main(argv):
  del argv
  r = run(_CONFIG.value, _BATCH.value)
  print(f"mesh {r['mesh']} on {r['device_count']} {r['backend']} device(s); "
        f"batch {r['batch']} clips of {tuple(r['video_shape'])}")
  print(f"tokens per clip: {r['tokens_per_clip']}")
  print(f"parameters: {r['params']:,}")
  for name, n in sorted(r["params_by_module"].items(), key=lambda kv: -kv[1]):
    print(f"  {name:24s} {n:,}")
  print(f"FLOPs per fwd+bwd step: XLA {r['flops_per_step_xla']:.4g}, "
        f"analytic (matmuls) {r['flops_per_step_analytic']:.4g}")
  print(f"compile {r['compile_s']:.1f} s, step {r['step_s'] * 1e3:.1f} ms, "
        f"loss {r['loss']:.4f}, grad norm {r['grad_norm']:.4g}")
  print(json.dumps(r))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
