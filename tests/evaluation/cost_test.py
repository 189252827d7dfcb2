import dataclasses

import jax
import numpy as np

from tests import helpers
from video_dit import sampling
from video_dit.diffusion import Diffusion, SamplerConfig
from video_dit.evaluation import cost
from video_dit.models import flops as flops_lib
from video_dit.models import registry


def test_cost_numbers_are_positive_and_consistent_with_the_config():
  config = helpers.runlocal_config()
  model, params = helpers.init(config)
  cfg = registry.model_config(config)
  shape = (2,) + registry.video_shape(config)
  inputs = registry.random_inputs(config, 2)
  cond = {k: v for k, v in inputs.items() if k not in ("x", "t")}
  diffusion = Diffusion.from_config(config.diffusion, flops_lib.num_tokens(cfg, shape[1:]))
  results = {}
  for name, steps, scales in (("euler", 4, (3.0, 2.0)), ("heun", 4, (3.0, 2.0)),
                              ("unguided", 4, (1.0, 1.0))):
    sampler = SamplerConfig(name=name.replace("unguided", "euler"), num_steps=steps,
                            text_scale=scales[0], id_scale=scales[1])
    r = cost.sampler_cost(model, params, diffusion, sampler, cond, shape, fps=8.0, repeats=1)
    # A pixel-space DiT: nothing to decode.
    assert r["decode_flops_per_sample"] == 0 and r["flops_per_sample"] == r["dit_flops_per_sample"]
    assert all(v > 0 for k, v in r.items() if not k.startswith("decode_"))
    # Guided: 3 network passes per call (1 at scales (1, 1)). The traced matmuls of the
    # guided call are the analytic count exactly; XLA's count adds elementwise work.
    passes = 1 if name == "unguided" else 3
    analytic = passes * r["model_calls_per_sample"] * flops_lib.forward_flops(
        cfg, shape[1:], config.text.max_len)
    assert r["network_passes_per_sample"] == passes * r["model_calls_per_sample"]
    assert r["matmul_flops_per_sample"] == analytic
    assert 1.0 < r["flops_per_sample"] / r["matmul_flops_per_sample"] < 1.1
    assert r["video_seconds_per_sample"] == 1.0  # 8 frames at 8 fps
    np.testing.assert_allclose(r["tflops_per_video_second"], r["flops_per_sample"] / 1e12)
    results[name] = r
  assert results["heun"]["model_calls_per_sample"] == 7
  np.testing.assert_allclose(results["heun"]["flops_per_sample"] / 7,
                             results["euler"]["flops_per_sample"] / 4, rtol=1e-6)


def test_the_sampler_makes_the_model_calls_it_counts():
  config = helpers.runlocal_config()
  model, params = helpers.init(config)
  dit = registry.build_dit(config)
  cond = {k: v for k, v in registry.random_inputs(config, 1).items() if k not in ("x", "t")}
  for name, steps, want in (("euler", 3, 3), ("heun", 3, 5)):  # Heun: Euler on the last step
    sampler = SamplerConfig(name=name, num_steps=steps, text_scale=3.0, id_scale=2.0)
    ticks = []
    fn = sampling.make_sampler(model, dit.diffusion, sampler, (1,) + dit.shape,
                               on_model_call=lambda: ticks.append(1))
    jax.block_until_ready(fn(params, cond, jax.random.key(0)))
    jax.effects_barrier()
    assert len(ticks) == sampler.model_calls == want, name


def test_cached_sampling_cost_counts_the_full_calls_that_ran():
  config = helpers.runlocal_config()
  model, params = helpers.init(config)
  p = helpers.perturb_zeros(params)
  built = registry.build_dit(config)
  cond = {k: v for k, v in registry.random_inputs(config, 1).items() if k not in ("x", "t")}
  shape = (1,) + built.shape
  plain = dataclasses.replace(built.sampler, num_steps=4)
  r = {thr: cost.sampler_cost(model, p, built.diffusion,
                              dataclasses.replace(plain, cache_threshold=thr), cond, shape,
                              fps=8.0, repeats=1) for thr in (0.0, 1e9)}
  assert r[0.0]["full_model_calls_per_sample"] == r[0.0]["model_calls_per_sample"] == 4
  cached = r[1e9]
  assert cached["full_model_calls_per_sample"] == 2 and cached["model_calls_per_sample"] == 4
  assert cached["measured_network_passes_per_sample"] == 3 * 2  # 3 passes per full call
  assert cached["network_passes_per_sample"] == 3 * 4  # the sampler's, none skipped
  assert r[0.0]["measured_network_passes_per_sample"] == r[0.0]["network_passes_per_sample"]
  # Skipped calls cost their indicator, conditioning and final layer only: the sample
  # costs a bit more than half the uncached one (2 of 4 calls in full).
  ratio = cached["dit_flops_per_sample"] / r[0.0]["dit_flops_per_sample"]
  assert 0.5 < ratio < 0.75, ratio
  assert cached["matmul_flops_per_sample"] < 0.75 * r[0.0]["matmul_flops_per_sample"]


def test_one_pass_guidance_and_shortcut_cost_one_pass_per_step():
  config = helpers.runlocal_config(**{"model.guidance_embed": True, "model.step_embed": True})
  model, params = helpers.init(config)
  cfg = registry.model_config(config)
  shape = (1,) + registry.video_shape(config)
  cond = {k: v for k, v in registry.random_inputs(config, 1).items()
          if k not in ("x", "t", "guidance_scale", "step_size")}
  one = flops_lib.forward_flops(cfg, shape[1:], config.text.max_len)
  for name in ("euler", "shortcut"):
    sampler = SamplerConfig(name=name, num_steps=4, text_scale=4.0, id_scale=2.0,
                            one_pass=True)
    r = cost.sample_flops(model, params, sampler, cond, shape)
    # One pass per step (the scales are an input); the scalar embeddings are not matmuls
    # of the network's width work, so the traced matmuls are 4 passes and a little more.
    assert 4 * one <= r["matmul_flops_per_sample"] < 4.1 * one, name
