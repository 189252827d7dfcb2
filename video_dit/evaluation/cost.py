"""What a generated video costs: FLOPs and seconds per sample and per video-second
(of decoded pixel frames: a latent-space DiT's cost includes its VAE decode).

XLA counts a loop body once, so the FLOPs of a sample are those of one guided
model call (XLA's cost analysis of its compiled program) times the number of
model calls the sampler makes (``SamplerConfig.model_calls``; a guided call is
``SamplerConfig.guidance_batch`` network passes). XLA's count includes elementwise
work; ``matmul_flops_per_sample`` counts the matmuls of the traced call only.

With the step cache (``SamplerConfig.cache_threshold``) the sampler reports how many
calls ran in full (measured on the timed samples, averaged): those cost a guided call
(condition encoders included, as every call of the uncached count), the skipped ones the
DiT without its blocks and encoders (patch embedding, timestep and final layer), and
every call the cache's indicator, each counted the same way.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from video_dit.diffusion import Diffusion, SamplerConfig, guidance
from video_dit.models import flops as flops_lib
from video_dit.sampling import make_sampler


def sampler_cost(model, params, diffusion: Diffusion, sampler: SamplerConfig, cond: dict,
                 shape: tuple[int, ...], fps: float, repeats: int = 2,
                 pixel_frames: int | None = None, codec=None) -> dict:
  """Cost of sampling a batch of ``shape`` (B, T, H, W, C) with ``cond``.

  A latent-space DiT passes its ``codec`` (``workdir.LatentCodec``): the VAE decode to
  pixels is timed and counted with the sampler, and the video-seconds are the decoded
  ``pixel_frames`` at ``fps`` (default: T, for a pixel-space DiT).
  """
  sample = make_sampler(model, diffusion, sampler, shape, return_stats=True)

  times, decode_times, first_call_s, full_calls = [], [], 0.0, []
  for i in range(repeats + 1):  # the first call compiles and warms up
    t0 = time.perf_counter()
    video, stats = jax.block_until_ready(sample(params, cond, jax.random.key(i)))
    t1 = time.perf_counter()
    if codec is not None:
      jax.block_until_ready(codec.decode(video))
    if not i:
      first_call_s = time.perf_counter() - t0
      continue
    times.append(time.perf_counter() - t0)
    decode_times.append(time.perf_counter() - t1)
    full_calls.append(int(stats["full_calls"]))
  full = float(np.mean(full_calls))
  flops = sample_flops(model, params, sampler, cond, shape, codec, full_calls=full)
  dit_flops, decode_flops = flops["dit_flops_per_sample"], flops["decode_flops_per_sample"]
  matmul = flops["matmul_flops_per_sample"]
  seconds = float(np.median(times)) / shape[0]
  video_seconds = (pixel_frames or shape[1]) / fps
  flops = dit_flops + decode_flops
  return dict(flops_per_sample=flops, dit_flops_per_sample=dit_flops,
              decode_flops_per_sample=decode_flops, matmul_flops_per_sample=matmul,
              seconds_per_sample=seconds,
              decode_seconds_per_sample=(float(np.median(decode_times)) / shape[0]
                                         if codec is not None else 0.0),
              video_seconds_per_sample=video_seconds,
              seconds_per_video_second=seconds / video_seconds,
              tflops_per_video_second=flops / video_seconds / 1e12,
              model_calls_per_sample=sampler.model_calls, full_model_calls_per_sample=full,
              network_passes_per_sample=sampler.network_passes,
              measured_network_passes_per_sample=full * sampler.guidance_batch,
              first_call_s=first_call_s)


def sample_flops(model, params, sampler: SamplerConfig, cond: dict, shape: tuple[int, ...],
                 codec=None, full_calls: float | None = None) -> dict:
  """FLOPs per sample of a batch of ``shape``: the DiT's (one guided call, as XLA counts
  it, times the sampler's model calls), its matmuls alone, and the ``codec``'s decode.
  With the step cache, ``full_calls`` of the calls run in full (default: all of them)."""
  apply = lambda x, t, c, **mode: model.apply(params, x, t, **c, **mode)
  guide = dict(text_scale=sampler.text_scale, id_scale=sampler.id_scale,
               interval=sampler.interval, one_pass=sampler.one_pass)
  x = jax.ShapeDtypeStruct(shape, np.float32)
  t = jax.ShapeDtypeStruct(shape[:1], np.float32)
  lowered = jax.jit(guidance.guided(apply, **guide)).lower(x, t, cond)
  dit_flops = _xla_flops(lowered.compile()) * sampler.model_calls / shape[0]
  matmul = flops_lib.traced_matmul_flops(lowered) * sampler.model_calls / shape[0]
  if sampler.cache_threshold > 0:
    calls = sampler.model_calls
    full = calls if full_calls is None else full_calls
    indicator = jax.jit(lambda x, t, c: apply(x, t, c, cache="indicator")).lower(x, t, cond)
    ind = jax.eval_shape(lambda x, t, c: apply(x, t, c, cache="indicator"), x, t, cond)
    residual = jax.ShapeDtypeStruct((sampler.guidance_batch * shape[0],) + ind.shape[1:],
                                    ind.dtype)
    encode = guidance.guided_stateful(lambda x, t, c, _: (x, apply(x, t, c, cache="encode")),
                                      **guide)
    encoded = jax.eval_shape(lambda x, t, c: encode(x, t, c, None)[1], x, t, cond)
    skip = guidance.guided_stateful(lambda x, t, c, s: (apply(
        x, t, c, cache="skip", residual=s[0], encoded=s[1]), s), **guide)
    skipped = jax.jit(lambda x, t, c, s: skip(x, t, c, s)[0]).lower(x, t, cond,
                                                                   (residual, encoded))
    parts = ((lowered, full), (skipped, calls - full), (indicator, calls))
    dit_flops = sum(_xla_flops(p.compile()) * n for p, n in parts) / shape[0]
    matmul = sum(flops_lib.traced_matmul_flops(p) * n for p, n in parts) / shape[0]
  decode_flops = 0.0
  if codec is not None:
    decode_flops = _xla_flops(codec.lower_decode(shape).compile()) / shape[0]
  return dict(dit_flops_per_sample=dit_flops, decode_flops_per_sample=decode_flops,
              matmul_flops_per_sample=matmul)


def _xla_flops(compiled) -> float:
  """XLA's FLOPs of a compiled program over all the devices it spans."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  devices = max(len(s.device_set) for s in jax.tree.leaves(compiled.output_shardings))
  return float(cost["flops"]) * devices
