"""Diffusion objectives, samplers and guidance: pure functions of arrays.

The trainer and the sampler share one small interface::

    diffusion = Diffusion(DiffusionConfig(...), num_tokens=L)
    loss, aux = diffusion.loss(model_fn, x0, cond, key)
    video = diffusion.sample(model_fn, shape, cond, key, SamplerConfig(...))

with ``model_fn(x_t, t, cond) -> prediction`` and model time t in [0, 1]
(1 = pure noise). ``cond`` is a dict of batched arrays passed through to the
model; guidance adds ``drop_text`` / ``drop_id``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from video_dit.diffusion import guidance, samplers, schedules
from video_dit.diffusion.losses import DiffusionConfig, diffusion_loss
from video_dit.diffusion.samplers import SamplerConfig
from video_dit.sharding import constrain

__all__ = ["Diffusion", "DiffusionConfig", "SamplerConfig"]


@dataclasses.dataclass(frozen=True)
class Diffusion:
  config: DiffusionConfig = DiffusionConfig()
  num_tokens: int = 0   # tokens per sample, for the token-dependent time shift

  @classmethod
  def from_config(cls, config_diffusion, num_tokens: int) -> "Diffusion":
    return cls(DiffusionConfig.from_config(config_diffusion), num_tokens)

  @property
  def shift(self) -> float:
    c = self.config
    return schedules.shift_for_tokens(self.num_tokens, c.shift, c.shift_base_tokens)

  def loss(self, model_fn: Callable, x0, cond: Any, key):
    """(scalar loss, aux) of the configured objective; see ``losses.diffusion_loss``."""
    return diffusion_loss(self.config, self.shift, model_fn, x0, cond, key)

  def sample(self, model_fn: Callable, shape, cond: Any, key, sampler: SamplerConfig,
             noise=None, return_stats: bool = False):
    """Samples a batch of ``shape`` from noise (or from ``noise``), with guidance.

    With ``sampler.cache_threshold`` > 0 (the step cache, ``samplers.cached_flow_sample``)
    ``model_fn`` also takes the model's cache modes, ``model_fn(x, t, cond, cache=...,
    residual=...)`` (``VideoDiT``). ``return_stats``: (video, {'full_calls': the guided
    model calls that ran in full, for the whole batch}).

    Frame conditioning: with ``cond['context_mask']`` the frames it marks are given,
    ``cond['context']`` (clean; with ``cond['context_t']`` the model sees them noised
    to that level, flow only) and come out unchanged.
    """
    cfg = self.config
    sampler.check(cfg.objective)
    k_noise, k_steps = jax.random.split(key)
    x = jax.random.normal(k_noise, shape, jnp.float32) if noise is None else noise
    x = constrain(x.astype(jnp.float32), ("act_batch",) + (None,) * (len(shape) - 1))
    given = None
    if isinstance(cond, dict) and cond.get("context_mask") is not None:
      given = cond["context_mask"].reshape(shape[:2] + (1,) * (len(shape) - 2))
      clean = cond["context"].astype(jnp.float32)
      if cond.get("context_t") is not None:
        if cfg.objective != "flow":
          raise ValueError("noised context frames (context_t) need a flow model; pass "
                           "clean ones.")
        eps = jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32)
        cond = dict(cond, context=schedules.flow_interpolate(clean, eps, cond["context_t"]))
    if sampler.cache_threshold > 0:
      x, full = self._sample_cached(model_fn, x, cond, sampler)
    else:
      x, full = self._sample(model_fn, x, cond, k_steps, sampler), sampler.model_calls
    if given is not None:  # the given frames, exactly
      x = jnp.where(given, clean, x)
    return (x, {"full_calls": jnp.asarray(full, jnp.int32)}) if return_stats else x

  def _sample_cached(self, model_fn, x, cond, sampler: SamplerConfig):
    if sampler.name == "shortcut":  # N jumps of 1/N, told their size
      grid = np.linspace(1.0, 0.0, sampler.num_steps + 1).astype(np.float32)
      cond = dict(cond, step_size=jnp.full((x.shape[0],), 1.0 / sampler.num_steps,
                                           jnp.float32))
    else:
      grid = samplers.flow_grid(sampler.num_steps, sampler.shift or self.shift)
    guide = functools.partial(guidance.guided_stateful, **self._guidance(sampler, x.shape[-1]))
    return samplers.cached_flow_sample(self.config, model_fn, guide, x, cond, grid,
                                       sampler.cache_threshold)

  def _sample(self, model_fn, x, cond, k_steps, sampler: SamplerConfig):
    cfg = self.config
    fn = self._guided(model_fn, sampler, x.shape[-1])
    if sampler.name == "shortcut":
      return samplers.shortcut_sample(cfg, fn, x, cond, sampler.num_steps)
    if cfg.objective == "flow":
      shift = sampler.shift or self.shift
      return samplers.flow_sample(cfg, fn, x, cond, samplers.flow_grid(sampler.num_steps, shift),
                                  sampler.name)
    grid = samplers.ddpm_grid(sampler.num_steps, cfg.num_timesteps)
    if sampler.name == "ddim":
      return samplers.ddim_sample(cfg, fn, x, cond, grid, sampler.eta, k_steps)
    if sampler.name == "ddpm":
      return samplers.ddpm_ancestral_sample(cfg, fn, x, cond, grid, k_steps)
    return samplers.dpmpp_2m_sample(cfg, fn, x, cond, grid)

  def _guided(self, model_fn, sampler: SamplerConfig, channels: int):
    return guidance.guided(model_fn, **self._guidance(sampler, channels))

  def _guidance(self, sampler: SamplerConfig, channels: int) -> dict:
    # With learned sigma only the prediction half is guided; the variance half
    # comes from the fully conditional branch.
    return dict(text_scale=sampler.text_scale, id_scale=sampler.id_scale,
                interval=sampler.interval,
                channels=channels if self.config.learn_sigma else None,
                one_pass=sampler.one_pass)

  def ddim_invert(self, model_fn: Callable, x0, cond: Any, sampler: SamplerConfig,
                  refine: int = 0):
    """Clean data -> noise that deterministic DDIM on the same grid maps back to x0
    (``refine`` fixed-point iterations per step make it near-exact)."""
    if self.config.objective != "ddpm":
      raise ValueError("ddim_invert needs diffusion.objective='ddpm'.")
    fn = self._guided(model_fn, sampler, x0.shape[-1])
    grid = samplers.ddpm_grid(sampler.num_steps, self.config.num_timesteps)
    return samplers.ddim_invert(self.config, fn, x0, cond, grid, refine)
