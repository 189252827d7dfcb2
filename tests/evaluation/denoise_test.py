"""The denoising curve against closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest

from video_dit.diffusion import Diffusion, DiffusionConfig, schedules
from video_dit.evaluation import denoise


class _Fake:
  """Stands in for a VideoDiT: ``apply(params, x_t, t, **cond)`` -> ``fn(x_t, t)``."""

  def __init__(self, fn):
    self.fn = fn

  def apply(self, params, x, t, **cond):
    assert set(cond) == {"face", "drop_text", "drop_id"}  # fully conditional: no drops
    return self.fn(x, t.reshape((-1,) + (1,) * (x.ndim - 1)))


def _data(n=24):
  rng = np.random.default_rng(0)
  return (0.1 + 0.4 * rng.standard_normal((n, 2, 4, 4, 3))).astype(np.float32), dict(
      face=np.zeros((n, 8, 8, 3), np.float32))


@pytest.mark.parametrize("prediction", ["x0", "velocity"])
def test_the_linear_denoiser_scores_one_and_a_bad_one_more(prediction):
  x0, cond = _data()
  m, s2 = float(x0.mean()), float(x0.var())

  def linear(x_t, t):  # the best affine guess of x0, as the model's prediction type
    c = (1 - t) * s2 / ((1 - t) ** 2 * s2 + t ** 2)
    x0_hat = m + c * (x_t - (1 - t) * m)
    return x0_hat if prediction == "x0" else (x_t - x0_hat) / t  # v = (x_t - x0) / t

  diffusion = Diffusion(DiffusionConfig("flow", prediction))
  curve = denoise.denoise_curve(_Fake(linear), None, diffusion, x0, cond, chunk=10)
  np.testing.assert_allclose(curve["ratio"], 1.0, rtol=1e-3)
  assert curve["t"] == list(denoise.LEVELS) and curve["data_std"] == pytest.approx(s2 ** 0.5)
  # Predicting the mean at every level (a network that ignores x_t): far worse at low noise.
  mean = lambda x_t, t: (jnp.full_like(x_t, m) if prediction == "x0"
                         else (x_t - m) / t)
  bad = denoise.denoise_curve(_Fake(mean), None, diffusion, x0, cond)
  assert bad["ratio"][0] > 50 and bad["ratio"][-1] < bad["ratio"][0]
  assert "t=0.02:" in denoise.summary(bad)


def test_ddpm_eps_oracle_is_exact():
  x0, cond = _data(8)
  cfg = DiffusionConfig("ddpm", "eps")

  def oracle(x_t, t):  # knows x0, so returns the exact eps of x_t
    i = jnp.round(t * cfg.num_timesteps).astype(jnp.int32)
    abar = jnp.asarray(schedules.ddpm_alphas_cumprod(cfg.schedule, cfg.num_timesteps))[i]
    return (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)

  curve = denoise.denoise_curve(_Fake(oracle), None, Diffusion(cfg), x0, cond, chunk=8)
  assert max(curve["mse"]) < 1e-6 and min(curve["linear_mse"]) > 1e-5
