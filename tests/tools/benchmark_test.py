import os

import jax
import numpy as np
import pytest

from configs import bench
from tests import helpers
from video_dit import benchmark
from video_dit.models import dit, flops, registry

FIELDS = ("step_s", "compile_s", "flops_per_step_xla", "flops_per_step_analytic",
          "tflops_per_s", "peak_tflops_per_s", "mfu", "mem_per_device_bytes", "tokens_per_s",
          "backend", "device_count")


def _config(arg, **mesh):
  config = bench.get_config(arg)
  with config.unlocked():
    config.mesh.update(dict(dict(data=-1, fsdp=1, tensor=1), **mesh))
  return config


@pytest.mark.parametrize("workload,tokens", [("image", 64), ("video", 4 * 64)])
def test_bench_workloads_report_every_field(workload, tokens):
  config = _config(f"workload={workload},runlocal,batch=8")  # 8 examples: 8 devices
  r, = benchmark.train_step(config, steps=2, peak=(1.0, "test"))
  assert all(k in r for k in FIELDS)
  assert r["tokens_per_clip"] == tokens and r["batch"] == 8
  assert r["step_s"] > 0 and r["compile_s"] > 0 and r["device_count"] == jax.device_count()
  # The traced step's matmuls are the analytic count (3x forward) exactly, once two known
  # differences are accounted for: the backward computes no gradient w.r.t. the data
  # (the patch embedding's and the timestep MLP's inputs), and blocked attention's
  # backward recomputes the logits (one more QK^T per block).
  cfg = registry.model_config(config)
  n, d, p, b = tokens, cfg.width, dit.patchify_dim(cfg), r["batch"]
  recompute = b * cfg.depth * 2 * n * n * d if cfg.attention == "blocked" else 0
  assert r["flops_per_step_matmul"] == (r["flops_per_step_analytic"]
                                        - b * (2 * n * p * d + 2 * 256 * d) + recompute)
  assert (cfg.attention == "blocked") == (workload == "video")
  # XLA's count of the compiled step adds the elementwise work (norms, softmax, GELU,
  # AdamW, EMA): a few to 15% on these tiny models, never less than the matmuls.
  assert 1.0 < r["flops_per_step_xla"] / r["flops_per_step_matmul"] < 1.2
  assert r["tflops_per_s"] == pytest.approx(r["flops_per_step_analytic"] / r["step_s"] / 1e12)
  assert r["mfu"] == pytest.approx(r["tflops_per_s"])  # peak 1.0
  assert r["tokens_per_s"] == pytest.approx(r["batch"] * tokens / r["step_s"])
  assert r["mem_per_device_bytes"] > r["mem_arguments_bytes"] > 0


def test_bench_config_switches_conditioning_off_and_on():
  off, on = bench.get_config("workload=image"), bench.get_config("workload=image,cond")
  assert off.text.encoder == "none" and off.identity.mode == "none"
  assert on.text.encoder == "trainable" and on.identity.mode == "separate"
  video = bench.get_config("workload=video")
  assert (video.data.frames, video.data.height, video.model.patch) == (16, 32, (1, 2, 2))
  assert flops.num_tokens(registry.model_config(video), registry.video_shape(video)) == 4096
  with pytest.raises(ValueError, match="workload"):
    bench.get_config("workload=audio")


def test_fsdp_cuts_parameter_and_optimizer_memory():
  # Compile only: per-device arguments (params, Adam moments, EMA) shrink with FSDP.
  config = helpers.runlocal_config(**{"model.width": 256, "model.num_heads": 4})
  one, = benchmark.train_step(_mesh(config, data=8), compile_only=True, peak=(1.0, ""))
  fsdp, = benchmark.train_step(_mesh(config, fsdp=8), compile_only=True, peak=(1.0, ""))
  assert one["step_s"] is None
  assert one["mem_arguments_bytes"] / fsdp["mem_arguments_bytes"] > 4


def _mesh(config, **sizes):
  config = config.copy_and_resolve_references()
  config.mesh.update(dict(dict(data=1, fsdp=1, tensor=1), **sizes))
  return config


def test_peak_sources():
  assert benchmark.matmul_peak_tflops("float32", n=256, repeats=2) > 0
  assert benchmark.device_peak_tflops(type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})()) \
      == 989.0
  assert benchmark.device_peak_tflops(type("D", (), {"device_kind": "TPU v5 lite"})()) == 197.0
  assert benchmark.device_peak_tflops(type("D", (), {"device_kind": "cpu"})()) is None
  assert np.isnan(benchmark.memory(type("C", (), {"memory_analysis": lambda self: None})())[
      "mem_per_device_bytes"])


def test_sample_benchmark_counts_guided_calls():
  config = _config("workload=image,runlocal,batch=8")
  r = benchmark.sample(config, steps=1, peak=(1.0, "test"))
  assert r["model_calls"] == config.sample.num_steps and r["batch"] == config.sample.num_videos
  assert r["step_s"] > 0 and r["flops_per_step_xla"] > 0
  # Guidance runs the model on three copies of the batch per call: the traced matmuls of
  # one call x calls are the analytic count exactly; XLA adds the elementwise work.
  assert r["network_passes"] == 3 * r["model_calls"]
  assert r["flops_per_step_matmul"] == r["flops_per_step_analytic"]
  assert 1.0 < r["flops_per_step_xla"] / r["flops_per_step_matmul"] < 1.1
  assert r["seconds_per_video_second"] == pytest.approx(
      r["step_s"] / r["batch"] / (config.data.frames / config.sample.fps))


def test_profile_charges_the_step_time_to_its_categories():
  from video_dit import profiling  # pylint: disable=g-import-not-at-top
  config = _config("workload=image,runlocal,batch=8,attention=blocked")
  r, prof = benchmark.train_step(config, steps=1, peak=(1.0, "test"), profile=True)
  assert prof["what"] == "profile" and set(prof["categories"]) == set(profiling.CATEGORIES)
  cats = prof["categories"]
  # Every named part of the step ran and was found by its scope or opcode.
  for name in ("matmul", "attention", "norm/modulate", "optimizer", "ema"):
    assert cats[name] > 0, cats
  # The op times are the step's: positive, and at most one op per thread at once. Each
  # fake CPU device runs its ops on its own thread, and while the OS switches 8 of them
  # on 2 cores their ops' spans overlap, so the bound counts devices or cores, the more.
  threads = max(os.cpu_count() or 1, jax.device_count())
  assert 0 < prof["op_s"] <= 1.25 * threads * prof["wall_s"], prof
  assert abs(sum(cats.values()) - prof["op_s"]) < 1e-6
  assert prof["transfer_s"] > 0 and "| matmul |" in prof["table"]
  # A thread waiting for others is no op (it overlaps theirs; seen with XLA:CPU's older
  # fusion emitters).
  assert not any(o["op"].startswith("Wait:") for o in prof["top_ops"]), prof["top_ops"]
  assert [o["seconds"] for o in prof["top_ops"]] == sorted(
      (o["seconds"] for o in prof["top_ops"]), reverse=True)


def test_categorize_reads_opcodes_fusion_bodies_and_scopes():
  from video_dit import profiling  # pylint: disable=g-import-not-at-top
  hlo = """
fused_computation.1 {
  p0 = f32[4,4]{1,0} parameter(0)
  ROOT dot.0 = f32[4,4]{1,0} dot(p0, p0), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY main {
  a = f32[4,4]{1,0} parameter(0)
  ynn_fusion.7 = f32[4,4]{1,0} fusion(a), kind=kCustom, calls=fused_computation.1, metadata={op_name="jit(f)/block_0/mlp/fc1/dot_general"}
  add_fusion.2 = f32[4,4]{1,0} fusion(a), kind=kLoop, calls=fused_computation.1, metadata={op_name="jit(f)/optimizer/add"}
  multiply.3 = f32[4,4]{1,0} multiply(a, a), metadata={op_name="jit(f)/block_0/norm1/mul"}
  dot.4 = f32[4,4]{1,0} dot(a, a), metadata={op_name="jit(f)/block_0/attn/attention_core/dot_general"}
  transpose.5 = f32[4,4]{0,1} transpose(a), dimensions={1,0}, metadata={op_name="jit(f)/x"}
  ROOT tanh.6 = f32[4,4]{1,0} tanh(a), metadata={op_name="jit(f)/block_0/mlp/tanh"}
}
"""
  instrs, bodies = profiling.parse_hlo(hlo)
  cat = lambda n: profiling.categorize(n, instrs, bodies)
  assert cat("ynn_fusion.7") == "matmul"  # a dot inside the fusion's body
  assert cat("add_fusion.2") == "optimizer"  # the scope wins over the body
  assert cat("multiply.3") == "norm/modulate"
  assert cat("dot.4") == "attention"
  assert cat("transpose.5") == "transpose/copy"
  assert cat("tanh.6") == "other"


def test_profile_counts_a_loop_by_its_body_once():
  """A while loop's own trace event spans its body's events: only the body counts."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from video_dit import profiling  # pylint: disable=g-import-not-at-top

  def f(x):
    with jax.named_scope("attention_core"):
      return jax.lax.map(lambda r: jnp.tanh(r @ r.T).sum(), x)

  x = jnp.ones((8, 128, 128))
  compiled = jax.jit(f).lower(x).compile()
  prof = profiling.profile_compiled(compiled, lambda: jax.block_until_ready(compiled(x)), 3)
  instrs, _ = profiling.parse_hlo(compiled.as_text())
  assert any(i.opcode == "while" for i in instrs.values())  # there is a loop
  assert not any(instrs[o["op"]].opcode == "while" for o in prof["top_ops"]
                 if o["op"] in instrs), prof["top_ops"]
  assert prof["categories"]["attention"] > 0
  assert prof["op_s"] <= 1.25 * (os.cpu_count() or 1) * prof["wall_s"], prof


def test_train_bench_feeds_pixels_to_a_step_that_encodes_them(tmp_path):
  """The latent presets encode pixels inside the step: the bench's random batch is what
  the pipeline would give (pixels), and the codec is fitted with the data first."""
  from configs import synthetic_faces  # pylint: disable=g-import-not-at-top
  config = synthetic_faces.get_config("runlocal,codec=pca")
  with config.unlocked():
    config.data.data_dir = str(tmp_path / "data")
  bench = benchmark.TrainBench(config)
  assert bench.host_batch["video"].shape[1:] == registry.pixel_shape(config)
  assert bench.time(1) > 0 and int(bench.state.step) == 2  # the warm-up step and this one
