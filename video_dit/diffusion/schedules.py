"""Noise schedules and the conversions between what a model can predict.

Two families, both with model time t in [0, 1]:

* Rectified flow: x_t = (1 - t) x0 + t eps, velocity v = eps - x0 (t = 1 is noise).
* DDPM (variance preserving): x_t = a x0 + s eps with a = sqrt(abar), s = sqrt(1 - abar)
  over ``num_timesteps`` discrete steps i, model time t = i / num_timesteps;
  predictions eps, x0 or v = a eps - s x0.

Everything here is a pure function of arrays.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------- flow


def time_shift(t, shift: float):
  """Shifts t in [0, 1] toward noise for shift > 1: t' = s t / (1 + (s - 1) t).

  The SD3 resolution shift: with more tokens the same t destroys less signal,
  so training and sampling spend more time at high noise.
  """
  return shift * t / (1.0 + (shift - 1.0) * t)


def shift_for_tokens(num_tokens: int, base_shift: float = 1.0, base_tokens: int = 0) -> float:
  """The shift for ``num_tokens``: base_shift * sqrt(num_tokens / base_tokens).

  ``base_tokens=0`` turns the scaling off (the shift is ``base_shift``).
  """
  if base_tokens <= 0:
    return float(base_shift)
  return float(base_shift) * math.sqrt(num_tokens / base_tokens)


def logit_normal(key, shape, mean: float = 0.0, std: float = 1.0):
  """t = sigmoid(mean + std * n), n ~ N(0, 1); mean > 0 favours high noise."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, shape))


def flow_interpolate(x0, eps, t):
  t = _bcast(t, x0)
  return (1.0 - t) * x0 + t * eps


def flow_precondition(t, sigma_data: float):
  """(c_skip, c_out) of a preconditioned flow x0 prediction (Karras et al. 2022, EDM, in
  flow time): x0_hat = c_skip x_t + c_out F(x_t, t).

  For data of standard deviation ``sigma_data``, c_skip x_t is the best linear guess of
  x0 from x_t and c_out the standard deviation of what is left, so the network's target
  F* = (x0 - c_skip x_t) / c_out has unit variance at every t. At t -> 0 the prediction
  is x_t itself (the network only refines it); at t = 1 it is c_out F = sigma_data F.
  """
  t = jnp.asarray(t, jnp.float32)
  s2 = sigma_data ** 2
  var = (1.0 - t) ** 2 * s2 + t ** 2  # Var(x_t)
  return (1.0 - t) * s2 / var, t * sigma_data * jax.lax.rsqrt(var)


def flow_x0_from(pred, x_t, t, prediction: str):
  """(x0, eps) implied by a flow model's ``pred`` ('velocity' or 'x0')."""
  t = _bcast(t, x_t)
  if prediction == "velocity":
    return x_t - t * pred, x_t + (1.0 - t) * pred
  if prediction == "x0":
    return pred, (x_t - (1.0 - t) * pred) / jnp.maximum(t, 1e-6)
  raise ValueError(f"flow prediction '{prediction}' is unknown; use 'velocity' or 'x0'.")


def flow_velocity(pred, x_t, t, prediction: str):
  """The velocity dx/dt implied by ``pred``."""
  if prediction == "velocity":
    return pred
  x0, eps = flow_x0_from(pred, x_t, t, prediction)
  return eps - x0


# --------------------------------------------------------------------------- DDPM


def ddpm_alphas_cumprod(schedule: str, num_timesteps: int = 1000) -> np.ndarray:
  """abar_i for i = 0 .. num_timesteps - 1 (float64 numpy; tables are tiny)."""
  if schedule == "linear":  # Ho et al. 2020, scaled to the number of steps
    scale = 1000 / num_timesteps
    betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
  elif schedule == "cosine":  # Nichol & Dhariwal 2021
    s = 0.008
    f = lambda i: np.cos((i / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
    i = np.arange(num_timesteps + 1, dtype=np.float64)
    betas = np.clip(1 - f(i[1:]) / f(i[:-1]), 0, 0.999)
  else:
    raise ValueError(f"DDPM schedule '{schedule}' is unknown; use 'linear' or 'cosine'.")
  return np.cumprod(1.0 - betas)


def ddpm_interpolate(x0, eps, abar):
  abar = _bcast(abar, x0)
  return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps


def ddpm_target(x0, eps, abar, prediction: str):
  """What a model predicting ``prediction`` ('eps', 'x0', 'v') should output."""
  abar = _bcast(abar, x0)
  a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  if prediction == "v":
    return a * eps - s * x0
  raise ValueError(f"DDPM prediction '{prediction}' is unknown; use 'eps', 'x0' or 'v'.")


def ddpm_x0_eps(pred, x_t, abar, prediction: str):
  """(x0, eps) implied by a DDPM model's ``pred``: inverts ``ddpm_target``."""
  abar = _bcast(abar, x_t)
  a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  if prediction == "eps":
    return (x_t - s * pred) / a, pred
  if prediction == "x0":
    return pred, (x_t - a * pred) / jnp.maximum(s, 1e-12)
  if prediction == "v":  # x0 = a x_t - s v, eps = s x_t + a v (a^2 + s^2 = 1)
    return a * x_t - s * pred, s * x_t + a * pred
  raise ValueError(f"DDPM prediction '{prediction}' is unknown; use 'eps', 'x0' or 'v'.")


def posterior_tables(abar: np.ndarray) -> dict[str, np.ndarray]:
  """q(x_prev | x_t, x0) for a (possibly respaced) abar sequence in time order.

  x_prev = coef_x0 * x0 + coef_xt * x_t + sqrt(var) z. ``log_var`` is clipped at
  the first step (where the posterior variance is 0), as in Nichol & Dhariwal.
  """
  abar = np.asarray(abar, np.float64)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  beta = 1.0 - abar / abar_prev
  var = beta * (1.0 - abar_prev) / (1.0 - abar)
  log_var = np.log(np.concatenate([var[1:2], var[1:]]) if len(var) > 1 else beta)
  return dict(beta=beta, var=var, log_var=log_var,
              coef_x0=np.sqrt(abar_prev) * beta / (1.0 - abar),
              coef_xt=np.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar))


def gaussian_kl(mean1, log_var1, mean2, log_var2):
  """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)), elementwise, in nats."""
  return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                + jnp.square(mean1 - mean2) * jnp.exp(-log_var2))


def snr(objective: str, t_or_abar):
  """Signal-to-noise ratio: abar / (1 - abar) (DDPM) or ((1 - t) / t)^2 (flow)."""
  if objective == "flow":
    return ((1.0 - t_or_abar) / t_or_abar) ** 2
  return t_or_abar / (1.0 - t_or_abar)


def _bcast(v, x):
  """(B,) per-example values -> broadcastable against x (B, ...)."""
  v = jnp.asarray(v, jnp.float32)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))
