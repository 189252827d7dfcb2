"""How well the model denoises real held-out clips, noise level by noise level.

One network pass per level on the real clips noised to model time t (the fully
conditional prediction, no guidance, one fixed noise draw), converted to x0 and compared
with the clean clip. The reference is the best *linear* denoiser for data of the clips'
own mean m and standard deviation s, m + c (x_t - a m) with c = Cov(x0, x_t) / Var(x_t)
(x_t = a x0 + s' eps): its error is what a
network that learned nothing about faces would reach. A ratio above 1 at a level means
the network does worse than that: at low noise it is the sign of predictions that
rebuild a barely noised clip through the tokens instead of keeping it, which a sampler's
steps at that level turn into saturated colour (README "Diffusion": what was tried).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from video_dit.diffusion import schedules

LEVELS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def denoise_curve(model, params, diffusion, x0, cond, levels=LEVELS, seed: int = 0,
                  chunk: int = 16) -> dict:
  """-> {'t': levels, 'mse': network x0 error, 'linear_mse': the linear denoiser's,
  'ratio': mse / linear_mse, 'data_std': s}; x0 (N, T, H, W, C) in model space."""
  cfg = diffusion.config
  x0 = np.asarray(x0, np.float32)
  m, s2 = float(np.mean(x0)), float(np.var(x0))
  eps = np.asarray(jax.random.normal(jax.random.key(seed), x0.shape, jnp.float32))

  @jax.jit
  def x0_error(params, x0_c, eps_c, cond_c, t):
    b = x0_c.shape[0]
    if cfg.objective == "flow":
      a, s, model_t = 1.0 - t, t, t  # x_t = a x0 + s eps
      x0_hat = lambda pred: schedules.flow_x0_from(pred, x_t, model_t, cfg.prediction)[0]
    else:
      i = jnp.round(t * (cfg.num_timesteps - 1)).astype(jnp.int32)
      abar = jnp.asarray(schedules.ddpm_alphas_cumprod(cfg.schedule, cfg.num_timesteps))[i]
      a, s, model_t = jnp.sqrt(abar), jnp.sqrt(1.0 - abar), i / cfg.num_timesteps
      x0_hat = lambda pred: schedules.ddpm_x0_eps(pred, x_t, jnp.broadcast_to(abar, (b,)),
                                                  cfg.prediction)[0]
    x_t = a * x0_c + s * eps_c
    model_t = jnp.broadcast_to(jnp.asarray(model_t, jnp.float32), (b,))
    pred = model.apply(params, x_t, model_t, **cond_c, drop_text=jnp.zeros((b,), bool),
                       drop_id=jnp.zeros((b,), bool)).astype(jnp.float32)
    if cfg.learn_sigma:
      pred = jnp.split(pred, 2, axis=-1)[0]
    c = a * s2 / (a * a * s2 + s * s)  # the best affine guess: m + c (x_t - a m)
    return (jnp.sum(jnp.square(x0_hat(pred) - x0_c)),
            jnp.sum(jnp.square(m + c * (x_t - a * m) - x0_c)))

  mse, linear = [], []
  for t in levels:
    err = lin = 0.0
    for i in range(0, len(x0), chunk):
      part = jax.tree.map(lambda v: np.asarray(v)[i:i + chunk], cond)
      e, l = x0_error(params, x0[i:i + chunk], eps[i:i + chunk], part, jnp.float32(t))
      err, lin = err + float(e), lin + float(l)
    mse.append(err / x0.size)
    linear.append(lin / x0.size)
  return dict(t=list(levels), mse=mse, linear_mse=linear,
              ratio=[m / max(l, 1e-12) for m, l in zip(mse, linear)],
              data_std=float(np.sqrt(s2)))


def summary(curve: dict) -> str:
  """'t=0.02: 0.84x ...' the ratio per level, for the log."""
  return " ".join(f"t={t:g}: {r:.2f}x" for t, r in zip(curve["t"], curve["ratio"]))
