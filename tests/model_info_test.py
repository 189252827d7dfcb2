import jax
import numpy as np

from tests import helpers
from video_dit import model_info


def test_one_sharded_forward_backward_reports_real_numbers():
  config = helpers.runlocal_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  r = model_info.run(config)
  assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2} and r["device_count"] == 8
  assert r["tokens_per_clip"] == 4 * 4 * 4  # 8x32x32 clip, tubelet 2x8x8
  assert r["params"] == sum(r["params_by_module"].values())
  _, params = helpers.init(helpers.runlocal_config())
  assert r["params"] == sum(x.size for x in jax.tree.leaves(params))
  assert r["params_by_module"]["block_0"] > 0 and "identity_encoder" in r["params_by_module"]
  # XLA's count of the compiled step and the analytic matmul count agree.
  assert 0.8 < r["flops_per_step_xla"] / r["flops_per_step_analytic"] < 1.25
  # A fresh model predicts zero; the flow target eps - x0 has variance 1 + 1.
  assert 1.5 < r["loss"] < 2.5
  assert r["grad_norm"] > 0
