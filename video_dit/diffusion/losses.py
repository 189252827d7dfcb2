"""Diffusion configuration and the training loss shared by every objective."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from video_dit.diffusion import context as context_lib
from video_dit.diffusion import schedules

OBJECTIVES = {"flow": ("velocity", "x0"), "ddpm": ("eps", "x0", "v")}
WEIGHTINGS = ("none", "min_snr", "skip")
PRECONDITIONS = ("none", "skip")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """What is learned and how training times are drawn."""
  objective: str = "flow"          # 'flow' (rectified flow) or 'ddpm'
  prediction: str = "velocity"     # flow: velocity | x0; ddpm: eps | x0 | v
  # flow: t = time_shift(sigmoid(t_mean + t_std n), shift); 'uniform' draws t ~ U(0, 1)
  t_sampling: str = "logit_normal"
  t_mean: float = 0.0
  t_std: float = 1.0
  t_uniform: float = 0.0           # share of examples whose t is U(0, 1) instead (flow):
                                   # keeps the tails trained under a peaked logit-normal
  shift: float = 1.0               # base shift (flow)
  shift_base_tokens: int = 0       # >0: shift grows as sqrt(tokens / shift_base_tokens)
  schedule: str = "linear"         # ddpm: linear | cosine
  num_timesteps: int = 1000        # ddpm
  weighting: str = "none"          # none | min_snr (Hang et al. 2023, in x0 space) |
                                   # skip (the network's own error: x0's over c_out(t)^2)
  # 'skip' (flow, x0): the model predicts x0_hat = c_skip(t) x_t + c_out(t) F, so at low
  # noise it refines x_t instead of rebuilding it (schedules.flow_precondition)
  precondition: str = "none"
  sigma_data: float = 0.5          # the data's standard deviation, for 'skip'
  min_snr_gamma: float = 5.0
  learn_sigma: bool = False        # ddpm: the model also outputs its log-variance,
  vlb_weight: float = 1.0          # trained by the variational bound (x num_timesteps/1000)
  # > 0: adds this times the squared error of the change between consecutive frames (axis
  # 1 of the video or latent): flicker and missing motion cost more, an error shared by
  # every frame nothing more
  motion_weight: float = 0.0

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"diffusion.objective='{self.objective}' is unknown; use one of "
                       f"{tuple(OBJECTIVES)}.")
    if self.prediction not in OBJECTIVES[self.objective]:
      raise ValueError(f"diffusion.prediction='{self.prediction}' does not fit objective "
                       f"'{self.objective}'; use one of {OBJECTIVES[self.objective]}.")
    if self.t_sampling not in ("logit_normal", "uniform"):
      raise ValueError(f"diffusion.t_sampling='{self.t_sampling}' is unknown; use "
                       "'logit_normal' or 'uniform'.")
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"diffusion.weighting='{self.weighting}' is unknown; use one of "
                       f"{WEIGHTINGS}.")
    if self.precondition not in PRECONDITIONS:
      raise ValueError(f"diffusion.precondition='{self.precondition}' is unknown; use one "
                       f"of {PRECONDITIONS}.")
    if self.precondition == "skip" and (self.objective, self.prediction) != ("flow", "x0"):
      raise ValueError("diffusion.precondition='skip' needs objective='flow' with "
                       f"prediction='x0' (got '{self.objective}', '{self.prediction}').")
    if self.weighting == "skip" and self.precondition != "skip":
      raise ValueError("diffusion.weighting='skip' needs diffusion.precondition='skip'.")
    if self.precondition == "skip" and not self.sigma_data > 0:
      raise ValueError(f"diffusion.sigma_data={self.sigma_data} must be > 0 (the data's "
                       "standard deviation, e.g. 0.5 for pixels in [-1, 1]).")
    if not 0.0 <= self.t_uniform <= 1.0:
      raise ValueError(f"diffusion.t_uniform={self.t_uniform} must be a share in [0, 1] "
                       "(e.g. 0.2; 0 = logit-normal times only).")
    if self.t_uniform and (self.objective, self.t_sampling) != ("flow", "logit_normal"):
      raise ValueError(f"diffusion.t_uniform={self.t_uniform} mixes uniform times into a "
                       "flow's logit-normal ones; with objective='ddpm' or "
                       "t_sampling='uniform' set it to 0.")
    if self.shift <= 0 or self.t_std <= 0:
      raise ValueError(f"diffusion.shift={self.shift} and diffusion.t_std={self.t_std} "
                       "must be > 0.")
    if self.learn_sigma and self.objective != "ddpm":
      raise ValueError("diffusion.learn_sigma=True needs objective='ddpm' (a flow has no "
                       "variance to learn); set learn_sigma=False.")
    if not self.motion_weight >= 0:
      raise ValueError(f"diffusion.motion_weight={self.motion_weight} must be >= 0 (0 = "
                       "no frame-to-frame term).")
    if self.objective == "ddpm":
      schedules.ddpm_alphas_cumprod(self.schedule, 2)  # raises on an unknown schedule
      if self.num_timesteps < 2:
        raise ValueError(f"diffusion.num_timesteps={self.num_timesteps} must be >= 2.")

  @classmethod
  def from_config(cls, c) -> "DiffusionConfig":
    """From a ``config.diffusion`` ConfigDict (or any mapping with these fields)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(c) - names
    if unknown:
      raise ValueError(f"config.diffusion has unknown fields {sorted(unknown)}; "
                       f"known: {sorted(names)}")
    return cls(**{k: c[k] for k in c})


def x0_error_scale2(cfg: DiffusionConfig, t, abar):
  """c^2 with |pred - target|^2 = c^2 |x0_hat - x0|^2 for the configured prediction."""
  if cfg.objective == "flow":
    return 1.0 / jnp.square(t) if cfg.prediction == "velocity" else jnp.ones_like(t)
  s = schedules.snr("ddpm", abar)
  return {"eps": s, "x0": jnp.ones_like(s), "v": s + 1.0}[cfg.prediction]


def diffusion_loss(cfg: DiffusionConfig, shift: float, model_fn: Callable, x0, cond: Any,
                   key) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean squared error to the objective's target at random times.

  ``key`` is one key, or one key per example (B,) for micro-batching. With frame
  conditioning ``cond`` holds ``context`` / ``context_mask`` / ``context_t``
  (``diffusion/context.py``): the given frames enter x_t noised to their own level
  ``context_t`` (flow only), and the error counts the other frames alone.

  ``cfg.motion_weight`` adds the error of the change between consecutive frames; with
  given frames only pairs of generated frames count, so the step from the last given
  frame to the first generated one is not charged.

  Returns (scalar loss, aux) where aux has the per-example model time ``t``, the
  per-example errors ``per_example`` before the time weighting (with the frame-change
  term, which is also ``motion``).
  """
  b = x0.shape[0]
  # One key per example: an example's noise and time do not depend on what else
  # is in the batch, so micro-batching (gradient accumulation) changes nothing.
  keys = key if jnp.ndim(key) == 1 else jax.random.split(key, b)
  k_t, k_eps = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  x0 = x0.astype(jnp.float32)
  eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(k_eps)
  if cfg.objective == "flow":
    if cfg.t_sampling == "uniform":
      t = jax.vmap(lambda k: jax.random.uniform(k, (), minval=1e-5, maxval=1.0))(k_t)
    else:
      t = jax.vmap(lambda k: schedules.logit_normal(k, (), cfg.t_mean, cfg.t_std))(k_t)
    t = jnp.clip(schedules.time_shift(t, shift), 1e-5, 1.0)
    if cfg.t_uniform:  # uniform in model time, after the shift; each example's own keys
      k_u = jax.vmap(lambda k: jax.random.fold_in(k, 1))(k_t)
      u, pick = jax.vmap(lambda k: jax.random.uniform(k, (2,)))(k_u).T
      t = jnp.where(pick < cfg.t_uniform, jnp.maximum(u, 1e-5), t)
    x_t = schedules.flow_interpolate(x0, eps, t)
    target = eps - x0 if cfg.prediction == "velocity" else x0
    model_t, abar, snr = t, None, schedules.snr("flow", t)
    if isinstance(cond, dict) and cond.get("context_mask") is not None:
      x_t, cond = _with_context(x_t, eps, cond)
  else:
    table = jnp.asarray(schedules.ddpm_alphas_cumprod(cfg.schedule, cfg.num_timesteps),
                        jnp.float32)
    i = jax.vmap(lambda k: jax.random.randint(k, (), 0, cfg.num_timesteps))(k_t)
    abar = table[i]
    x_t = schedules.ddpm_interpolate(x0, eps, abar)
    target = schedules.ddpm_target(x0, eps, abar, cfg.prediction)
    model_t, snr = i.astype(jnp.float32) / cfg.num_timesteps, schedules.snr("ddpm", abar)
  pred = model_fn(x_t, model_t, cond).astype(jnp.float32)
  keep = None
  if isinstance(cond, dict) and cond.get("context_mask") is not None:  # generated frames
    keep = context_lib.frame_weights(cond["context_mask"], x0.shape)
  aux = {}
  if cfg.learn_sigma:
    pred, var_out = jnp.split(pred, 2, axis=-1)
    aux["vlb"] = cfg.vlb_weight * _vlb(cfg, i, x0, x_t, abar, pred, var_out, keep)
  per_example = _per_example_mean(jnp.square(pred - target), keep)
  if cfg.motion_weight and x0.shape[1] > 1:
    aux["motion"] = _motion_error(pred - target, keep)
    per_example = per_example + cfg.motion_weight * aux["motion"]
  weight = jnp.ones_like(per_example)
  if cfg.weighting == "min_snr":
    weight = jnp.minimum(snr, cfg.min_snr_gamma) / x0_error_scale2(cfg, model_t, abar)
  elif cfg.weighting == "skip":
    weight = 1.0 / jnp.square(schedules.flow_precondition(model_t, cfg.sigma_data)[1])
  loss = jnp.mean(weight * per_example) + (jnp.mean(aux["vlb"]) if "vlb" in aux else 0.0)
  return loss, dict(aux, t=model_t, per_example=per_example)


def _per_example_mean(x, keep=None):
  """Mean of ``x`` over all but the batch axis, over the entries ``keep`` (same shape as
  ``x``) counts when given."""
  dims = tuple(range(1, x.ndim))
  if keep is None:
    return jnp.mean(x, axis=dims)
  return jnp.sum(x * keep, axis=dims) / jnp.maximum(jnp.sum(keep, axis=dims), 1.0)


def _motion_error(err, keep=None):
  """Per-example mean squared change of ``err`` between consecutive frames (axis 1),
  over the frame pairs whose frames both count (``keep``)."""
  both = None if keep is None else keep[:, 1:] * keep[:, :-1]
  return _per_example_mean(jnp.square(jnp.diff(err, axis=1)), both)


def _with_context(x_t, eps, cond):
  """x_t with the given frames at their level ``context_t``; cond's ``context`` as the
  model sees it."""
  context = cond.get("context")
  if context is None:
    raise ValueError("cond has context_mask but no context (the given frames' values).")
  context = context.astype(jnp.float32)
  if cond.get("context_t") is not None:
    context = schedules.flow_interpolate(context, eps, cond["context_t"])
  mask = cond["context_mask"].reshape(cond["context_mask"].shape + (1,) * (x_t.ndim - 2))
  return jnp.where(mask, context, x_t), dict(cond, context=context)


def _vlb(cfg: DiffusionConfig, i, x0, x_t, abar, pred, var_out, keep=None):
  """Per-example KL(q(x_prev | x_t, x0) || p(x_prev | x_t)) in bits per dimension.

  The mean comes from the stopped prediction, so this term trains only the
  variance output v in [-1, 1]: log var = f log beta + (1 - f) log beta_tilde,
  f = (v + 1) / 2 (Nichol & Dhariwal 2021). At i = 0 the clipped posterior
  variance stands in for the discretised decoder likelihood.
  """
  tables = {k: jnp.asarray(v, jnp.float32)[i] for k, v in schedules.posterior_tables(
      schedules.ddpm_alphas_cumprod(cfg.schedule, cfg.num_timesteps)).items()}
  b = lambda v: schedules._bcast(v, x0)  # pylint: disable=protected-access
  x0_hat, _ = schedules.ddpm_x0_eps(jax.lax.stop_gradient(pred), x_t, abar, cfg.prediction)
  mean_q = b(tables["coef_x0"]) * x0 + b(tables["coef_xt"]) * x_t
  mean_p = b(tables["coef_x0"]) * x0_hat + b(tables["coef_xt"]) * x_t
  frac = (var_out + 1.0) / 2.0
  log_var_p = frac * b(jnp.log(tables["beta"])) + (1.0 - frac) * b(tables["log_var"])
  kl = schedules.gaussian_kl(mean_q, b(tables["log_var"]), mean_p, log_var_p)
  mean = _per_example_mean(kl, keep)  # with given frames, the generated frames only
  return mean / jnp.log(2.0) * (
      cfg.num_timesteps / 1000.0)
