"""Samplers, each one ``lax.scan`` over its time grid (jit the caller once).

Flow: Euler and Heun (second order; Euler on the last step into t = 0).
DDPM: DDIM (``eta`` = 0 deterministic, 1 ancestral-like), DPM-Solver++(2M)
(Lu et al. 2022, data prediction, multistep; first order on the first and last
steps) and ancestral DDPM sampling on the respaced grid (with the model's
learned variance when it has one, else the posterior variance). Shortcut: a few-step
model (``model.step_embed``, ``tasks/distill.py``) jumps 1/N of the way in each of
its N steps, told the step size. Every sampler calls ``model_fn(x, t, cond)`` with
model time t in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from video_dit.diffusion import guidance, schedules
from video_dit.diffusion.losses import DiffusionConfig

SAMPLERS = {"flow": ("euler", "heun", "shortcut"), "ddpm": ("ddim", "dpmpp_2m", "ddpm")}
CACHED_SAMPLERS = ("euler", "shortcut")  # one model call per step: a step can be skipped


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  name: str = "euler"
  num_steps: int = 50
  shift: float = 0.0              # flow grid shift; 0 = the training shift
  eta: float = 0.0                # DDIM noise
  text_scale: float = 1.0
  id_scale: float = 1.0
  interval: tuple[float, float] | None = None   # guidance only for t in [lo, hi]
  one_pass: bool = False          # a guidance-distilled model: the scales are its input
  cache_threshold: float = 0.0    # step cache (``cached_flow_sample``); 0 = off

  @classmethod
  def from_config(cls, c) -> "SamplerConfig":
    """From a ``config.sample`` ConfigDict; interval (0, 1) means 'always guide'."""
    interval = tuple(float(v) for v in c.interval)
    return cls(name=c.sampler, num_steps=c.num_steps, shift=c.shift, eta=c.eta,
               text_scale=c.text_scale, id_scale=c.face_scale,
               interval=None if interval == (0.0, 1.0) else interval,
               cache_threshold=c.get("cache_threshold", 0.0))  # older configs lack it

  @property
  def model_calls(self) -> int:
    """Guided model calls per sample (Heun evaluates twice per step, but once on the
    last, where it is an Euler step)."""
    return 2 * self.num_steps - 1 if self.name == "heun" else self.num_steps

  @property
  def guidance_batch(self) -> int:
    """Network passes per guided call: 3 (none, text, text + identity), 2 at text scale
    1 (text, text + identity) or 1 when only the fully conditional prediction is used."""
    return guidance.passes(self.text_scale, self.id_scale, self.interval, self.one_pass)

  @property
  def network_passes(self) -> int:
    """Forward passes of the network per generated sample: the cost that matters."""
    return self.model_calls * self.guidance_batch

  def check(self, objective: str) -> None:
    if self.name not in SAMPLERS[objective]:
      raise ValueError(f"sampler '{self.name}' does not fit objective '{objective}'; use "
                       f"one of {SAMPLERS[objective]}.")
    if self.num_steps < 1:
      raise ValueError(f"sampler num_steps={self.num_steps} must be >= 1.")
    for name, scale, flag in (("text_scale", self.text_scale, "--text_scale"),
                              ("id_scale", self.id_scale, "--face_scale")):
      if isinstance(scale, jax.Array):  # traced (one program for every scale): checked
        continue                         # by the caller before the call
      if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"guidance {name}={scale} ({flag}) must be a finite number >= 0 "
                         "(1 = conditional, no guidance).")
    thr = self.cache_threshold
    if not (isinstance(thr, (int, float)) and math.isfinite(thr) and thr >= 0):
      raise ValueError(f"cache_threshold={thr} (--cache_threshold) must be a finite number "
                       ">= 0 (0 = no step cache).")
    if thr > 0 and self.name not in CACHED_SAMPLERS:
      raise ValueError(f"cache_threshold={thr} works with sampler 'euler' or 'shortcut', not "
                       f"'{self.name}'; use --sampler=euler or --cache_threshold=0.")


def flow_grid(num_steps: int, shift: float) -> np.ndarray:
  """t_0 = 1 > t_1 > ... > t_N = 0, uniform then shifted toward noise."""
  return np.asarray(schedules.time_shift(np.linspace(1.0, 0.0, num_steps + 1), shift),
                    np.float32)


def shortcut_sample(cfg: DiffusionConfig, fn: Callable, x, cond, num_steps: int):
  """N uniform steps from t = 1 to 0, each a jump of d = 1/N told to the model
  (``cond['step_size']``): x <- x - d * velocity(x, t, d)."""
  d = 1.0 / num_steps
  velocity = _flow_velocity_fn(cfg, fn, dict(cond, step_size=jnp.full((x.shape[0],), d,
                                                                        jnp.float32)))
  ts = jnp.asarray(np.linspace(1.0, 0.0, num_steps + 1)[:-1], jnp.float32)
  x, _ = jax.lax.scan(lambda x, t: (x - d * velocity(x, t), None), x, ts)
  return x


def ddpm_grid(num_steps: int, num_timesteps: int) -> np.ndarray:
  """Integer timesteps, 'trailing' spacing: T-1, ..., T/N - 1 (then clean)."""
  if num_steps > num_timesteps:
    raise ValueError(f"num_steps={num_steps} exceeds the {num_timesteps} DDPM timesteps.")
  steps = np.round(num_timesteps - np.arange(num_steps) * num_timesteps / num_steps) - 1
  return steps.astype(np.int32)


def _flow_velocity_fn(cfg: DiffusionConfig, fn: Callable, cond):
  def velocity(x, t):
    t_b = jnp.full((x.shape[0],), t, jnp.float32)
    return schedules.flow_velocity(fn(x, t_b, cond).astype(jnp.float32), x, t_b,
                                   cfg.prediction)
  return velocity


def flow_sample(cfg: DiffusionConfig, fn: Callable, x, cond, grid: np.ndarray,
                method: str):
  velocity = _flow_velocity_fn(cfg, fn, cond)

  def step(x, ts):
    t, t_next = ts
    dt = t_next - t
    v = velocity(x, t)
    if method == "euler":
      return x + dt * v, None
    x_euler = x + dt * v
    heun = lambda: x + dt * 0.5 * (v + velocity(x_euler, t_next))
    return jax.lax.cond(t_next > 0, heun, lambda: x_euler), None

  x, _ = jax.lax.scan(step, x, (jnp.asarray(grid[:-1]), jnp.asarray(grid[1:])))
  return x


def _ddpm_tables(cfg: DiffusionConfig, grid: np.ndarray):
  table = schedules.ddpm_alphas_cumprod(cfg.schedule, cfg.num_timesteps)
  abar = table[grid]
  abar_next = np.append(table[grid[1:]], 1.0)  # the last step lands on clean data
  return (jnp.asarray(grid / cfg.num_timesteps, jnp.float32), jnp.asarray(abar, jnp.float32),
          jnp.asarray(abar_next, jnp.float32))


def _x0_eps(cfg, fn, cond, x, t, abar, with_var=False):
  t_b = jnp.full((x.shape[0],), t, jnp.float32)
  out = fn(x, t_b, cond).astype(jnp.float32)
  pred, var_out = out[..., :x.shape[-1]], out[..., x.shape[-1]:]  # learned sigma: 2C
  x0, eps = schedules.ddpm_x0_eps(pred, x, abar, cfg.prediction)
  return (x0, eps, var_out) if with_var else (x0, eps)


def ddpm_ancestral_sample(cfg: DiffusionConfig, fn: Callable, x, cond, grid, key):
  """x_prev ~ q(x_prev | x_t, x0_hat) with the respaced grid's posterior."""
  ts, abars, _ = _ddpm_tables(cfg, grid)
  table = schedules.ddpm_alphas_cumprod(cfg.schedule, cfg.num_timesteps)
  post = schedules.posterior_tables(table[grid[::-1]])  # in time order (ascending)
  post = {k: jnp.asarray(v[::-1], jnp.float32) for k, v in post.items()}  # grid order
  last = jnp.arange(len(grid)) == len(grid) - 1

  def step(x, inp):
    t, abar, coef_x0, coef_xt, log_var, beta, is_last, k = inp
    x0, _, var_out = _x0_eps(cfg, fn, cond, x, t, abar, with_var=True)
    if cfg.learn_sigma:
      frac = (var_out + 1.0) / 2.0
      log_var = frac * jnp.log(beta) + (1.0 - frac) * log_var
    noise = jnp.exp(0.5 * log_var) * jax.random.normal(k, x.shape, x.dtype)
    return coef_x0 * x0 + coef_xt * x + jnp.where(is_last, 0.0, noise), None

  keys = jax.random.split(key, len(grid))
  x, _ = jax.lax.scan(step, x, (ts, abars, post["coef_x0"], post["coef_xt"],
                                post["log_var"], post["beta"], last, keys))
  return x


def ddim_sample(cfg: DiffusionConfig, fn: Callable, x, cond, grid, eta: float, key):
  ts, abars, abars_next = _ddpm_tables(cfg, grid)

  def step(x, inp):
    t, abar, abar_next, k = inp
    x0, eps = _x0_eps(cfg, fn, cond, x, t, abar)
    sigma = eta * jnp.sqrt((1 - abar_next) / (1 - abar) * (1 - abar / abar_next))
    x = (jnp.sqrt(abar_next) * x0 + jnp.sqrt(jnp.maximum(1 - abar_next - sigma ** 2, 0.0)) * eps
         + sigma * jax.random.normal(k, x.shape, x.dtype))
    return x, None

  keys = jax.random.split(key, len(grid))
  x, _ = jax.lax.scan(step, x, (ts, abars, abars_next, keys))
  return x


def dpmpp_2m_sample(cfg: DiffusionConfig, fn: Callable, x, cond, grid):
  ts, abars, abars_next = _ddpm_tables(cfg, grid)
  last = len(grid) - 1

  def lam(abar):  # half log-SNR, log(alpha / sigma)
    return 0.5 * (jnp.log(abar) - jnp.log1p(-abar))

  def step(carry, inp):
    x, x0_prev, h_prev = carry
    i, t, abar, abar_next = inp
    x0, _ = _x0_eps(cfg, fn, cond, x, t, abar)
    final = i == last
    safe_next = jnp.where(final, abar, abar_next)  # keeps the unused branch finite
    h = lam(safe_next) - lam(abar)
    r = h_prev / h
    d = jnp.where(i == 0, x0, (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev)
    x_next = (jnp.sqrt((1 - safe_next) / (1 - abar)) * x
              - jnp.sqrt(safe_next) * jnp.expm1(-h) * d)
    return (jnp.where(final, x0, x_next), x0, h), None

  init = (x, jnp.zeros_like(x), jnp.ones((), jnp.float32))
  (x, _, _), _ = jax.lax.scan(step, init, (jnp.arange(len(grid)), ts, abars, abars_next))
  return x


def ddim_invert(cfg: DiffusionConfig, fn: Callable, x0, cond, grid: np.ndarray,
                refine: int = 0):
  """Deterministic DDIM run backwards: clean data -> the noise that DDIM (eta=0)
  on the same grid maps back to it.

  Each step needs the prediction at the (unknown) noisier point; plain inversion
  uses the current point instead (error O(1/steps)). ``refine`` > 0 fixed-point
  iterations solve for the noisier point, so each step inverts the sampler's
  step almost exactly (one more model call per iteration).
  """
  up = grid[::-1]                                   # T/N - 1, ..., T - 1
  table = schedules.ddpm_alphas_cumprod(cfg.schedule, cfg.num_timesteps)
  abar_cur = jnp.asarray(np.concatenate([[1.0], table[up[:-1]]]), jnp.float32)
  abar_next = jnp.asarray(table[up], jnp.float32)
  ts = jnp.asarray(up / cfg.num_timesteps, jnp.float32)

  def step(x, inp):
    t, a_cur, a_next = inp

    def update(guess):
      _, eps = _x0_eps(cfg, fn, cond, guess, t, a_next)
      x0_hat = (x - jnp.sqrt(1 - a_cur) * eps) / jnp.sqrt(a_cur)
      return jnp.sqrt(a_next) * x0_hat + jnp.sqrt(1 - a_next) * eps

    return jax.lax.fori_loop(0, refine, lambda _, g: update(g), update(x)), None

  x, _ = jax.lax.scan(step, x0.astype(jnp.float32), (ts, abar_cur, abar_next))
  return x


def cached_flow_sample(cfg: DiffusionConfig, model_fn: Callable, guide: Callable, x, cond,
                       grid: np.ndarray, threshold: float):
  """Euler on ``grid`` that reuses the DiT blocks' output while little changes (TeaCache,
  Liu et al. 2024), with no training and no calibration.

  Each step first computes the model's cheap indicator, block 0's input modulated by the
  timestep embedding alone (``model_fn(x, t, cond, cache='indicator')``), and adds its
  relative L1 change since the previous step, mean|ind - prev| / mean|prev|, to an
  accumulator. While the sum stays under ``threshold`` the step skips the blocks and adds
  the residual of the last full pass to its tokens instead (``cache='skip'``: patch
  embedding, conditioning and final layer only); otherwise it runs in full
  (``cache='fill'``), keeps the new residual and resets the sum. The first and last steps
  always run in full. One decision per step for the whole batch (the means run over it),
  so ``lax.cond`` really skips the work. The conditions (text and identity encoders,
  ``cache='encode'``) are encoded once, before the loop: XLA hoists them out of the
  uncached loop, but not out of a ``lax.cond``. TeaCache also rescales the change with a
  polynomial fitted per model; this uses it as is.

  Args:
    guide: wraps ``(x, t, cond, state) -> (prediction, state)`` with the sampler's guidance
      (``guidance.guided_stateful``); the state, (residual, encoded conditions), is in the
      network's batch.
  Returns:
    (x at the grid's end, the number of steps that ran in full).
  """
  def fill(x, t, c, state):
    out, res = model_fn(x, t, c, cache="fill", encoded=state[1])
    return out, (res, state[1])
  fill, skip = guide(fill), guide(lambda x, t, c, state: (model_fn(
      x, t, c, cache="skip", residual=state[0], encoded=state[1]), state))
  t_b = lambda t: jnp.full((x.shape[0],), t, jnp.float32)
  indicator = lambda x, t: model_fn(x, t, cond, cache="indicator").astype(jnp.float32)
  zeros = lambda s: jnp.zeros(s.shape, s.dtype)
  t0 = t_b(grid[0])
  # Guidance tiles the conditions; its prediction slot is unused here.
  encoded = guide(lambda x, t, c, _: (x, model_fn(x, t, c, cache="encode")))(x, t0, cond,
                                                                             None)[1]
  res0 = zeros(jax.eval_shape(fill, x, t0, cond, (None, encoded))[1][0])
  ind0 = zeros(jax.eval_shape(indicator, x, t0))
  last = len(grid) - 2

  def step(carry, inp):
    x, state, prev, acc, full = carry
    i, t, t_next = inp
    tb = t_b(t)
    ind = indicator(x, tb)
    acc = acc + jnp.abs(ind - prev).mean() / jnp.maximum(jnp.abs(prev).mean(), 1e-12)
    reuse = (i > 0) & (i < last) & (acc < threshold)
    out, state = jax.lax.cond(reuse, skip, fill, x, tb, cond, state)
    v = schedules.flow_velocity(out.astype(jnp.float32), x, tb, cfg.prediction)
    return (x + (t_next - t) * v, state, ind, jnp.where(reuse, acc, 0.0),
            full + 1 - reuse.astype(jnp.int32)), None

  init = (x, (res0, encoded), ind0, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
  (x, _, _, _, full), _ = jax.lax.scan(
      step, init, (jnp.arange(len(grid) - 1), jnp.asarray(grid[:-1]), jnp.asarray(grid[1:])))
  return x, full
