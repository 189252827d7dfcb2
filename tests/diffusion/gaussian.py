"""Closed-form optimal predictors for data x0 ~ N(mu, sigma^2 I).

With x_t = a x0 + b eps (flow: a = 1 - t, b = t; DDPM: a = sqrt(abar),
b = sqrt(1 - abar)), x_t ~ N(a mu, V) with V = a^2 sigma^2 + b^2 and
  E[x0 | x_t]  = mu + a sigma^2 / V (x_t - a mu)
  E[eps | x_t] = b / V (x_t - a mu).
The minimal expected squared error of a target u = p x0 + q eps is its
conditional variance Var(u) - Cov(u, x_t)^2 / V per dimension.
"""

import jax.numpy as jnp
import numpy as np

from video_dit.diffusion import schedules


def _coeffs(cfg, t):
  if cfg.objective == "flow":
    return 1.0 - t, t
  table = jnp.asarray(schedules.ddpm_alphas_cumprod(cfg.schedule, cfg.num_timesteps),
                      jnp.float32)
  abar = table[jnp.round(t * cfg.num_timesteps).astype(jnp.int32)]
  return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


def posterior(cfg, x_t, t, mu, sigma):
  a, b = (schedules._bcast(c, x_t) for c in _coeffs(cfg, t))  # pylint: disable=protected-access
  var = a ** 2 * sigma ** 2 + b ** 2
  x0 = mu + a * sigma ** 2 / var * (x_t - a * mu)
  eps = b / var * (x_t - a * mu)
  return a, b, x0, eps


def optimal_model(cfg, mu, sigma):
  """model_fn(x, t, cond) predicting exactly the configured target's posterior mean."""
  def model_fn(x_t, t, cond):
    del cond
    a, b, x0, eps = posterior(cfg, x_t, t, mu, sigma)
    if cfg.prediction == "velocity":
      return eps - x0
    if cfg.prediction == "x0":
      return x0
    if cfg.prediction == "eps":
      return eps
    return a * eps - b * x0  # v
  return model_fn


def min_loss(cfg, t, sigma):
  """Per-example minimal mean squared error at model times t (unweighted)."""
  a, b = (np.asarray(c, np.float64) for c in _coeffs(cfg, jnp.asarray(t)))
  p, q = {"velocity": (-1.0, 1.0), "x0": (1.0, 0.0), "eps": (0.0, 1.0), "v": (-b, a)}[
      cfg.prediction]
  var = a ** 2 * sigma ** 2 + b ** 2
  var_u = p ** 2 * sigma ** 2 + q ** 2
  cov = p * a * sigma ** 2 + q * b
  return var_u - cov ** 2 / var
