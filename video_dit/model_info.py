"""One sharded forward/backward of a config's model, measured.

What `python -m tools.model_info` prints and `tools.benchmark --what=train` times:
parameter counts, tokens per clip, FLOPs (XLA's count of the compiled step and
the analytic matmul count), compile and step time. The loss is the config's
diffusion loss on random "clean" video and conditions.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from video_dit import benchmark, sharding
from video_dit.models import flops as flops_lib
from video_dit.models import registry


def run(config, batch: int = 0, steps: int = 1) -> dict:
  """Sharded forward/backward of the config's model; returns the measurements
  (``step_s``: the median of ``steps`` timed calls after one warm-up call)."""
  mesh = sharding.make_mesh(config.mesh)
  dit = registry.build_dit(config)
  model, cfg, shape, diffusion = dit.model, dit.cfg, dit.shape, dit.diffusion
  batch = batch or config.data.batch_size
  sharding.check_batch(batch, mesh)

  key = jax.random.key(config.seed)
  init_inputs = registry.dummy_inputs(config, 1)
  params, param_shardings = sharding.jit_init(lambda k: model.init(k, **init_inputs), mesh, key)
  host = registry.random_inputs(config, batch, config.seed)
  del host["t"]  # the diffusion loss draws times itself
  data = sharding.shard_batch(host, mesh)

  def loss_fn(p, d):
    cond = {k: v for k, v in d.items() if k != "x"}
    model_fn = lambda x, t, c: model.apply(p, x, t, **c)
    return diffusion.loss(model_fn, d["x"], cond, jax.random.key(config.seed))[0]

  def step(p, d):
    loss, grads = jax.value_and_grad(loss_fn)(p, d)
    return loss, grads, global_norm(grads)

  data_shardings = jax.tree.map(lambda x: x.sharding, data)
  fwd_bwd = jax.jit(step, in_shardings=(param_shardings, data_shardings),
                    out_shardings=(None, param_shardings, None))
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    lowered = fwd_bwd.lower(params, data)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, data))  # warm-up
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      loss, _, grad_norm = jax.block_until_ready(compiled(params, data))
      times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))

  counts = {name: int(sum(x.size for x in jax.tree.leaves(sub)))
            for name, sub in params["params"].items()}
  return dict(
      mesh=dict(mesh.shape), batch=batch, video_shape=list(shape),
      tokens_per_clip=flops_lib.num_tokens(cfg, shape),
      params=sum(counts.values()), params_by_module=counts,
      # XLA counts the per-device program; summed over devices (replicated work
      # such as the small encoders counts once per device).
      flops_per_step_xla=benchmark.xla_flops(compiled, mesh.size),
      flops_per_step_matmul=flops_lib.traced_matmul_flops(lowered),
      flops_per_step_analytic=3 * batch * flops_lib.forward_flops(cfg, shape,
                                                                 cfg.text.max_len),
      compile_s=compile_s, step_s=step_s, loss=float(loss), grad_norm=float(grad_norm),
      backend=jax.default_backend(), device_count=jax.device_count())


def global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
