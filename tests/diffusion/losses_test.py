"""Losses and conversions against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.diffusion import gaussian
from video_dit.diffusion import Diffusion, DiffusionConfig, losses, schedules

MU, SIGMA = 0.3, 0.8


@pytest.mark.parametrize("cfg", [
    DiffusionConfig("flow", "velocity"),
    DiffusionConfig("flow", "x0", t_mean=1.0),
    DiffusionConfig("flow", "velocity", t_sampling="uniform"),
    DiffusionConfig("ddpm", "eps", schedule="linear"),
    DiffusionConfig("ddpm", "v", schedule="cosine"),
    DiffusionConfig("ddpm", "x0", schedule="cosine"),
])
def test_optimal_predictor_reaches_the_analytic_minimum(cfg):
  x0 = MU + SIGMA * jax.random.normal(jax.random.key(0), (64, 8, 32, 32))
  fn = gaussian.optimal_model(cfg, MU, SIGMA)
  loss, aux = jax.jit(lambda k: Diffusion(cfg).loss(fn, x0, {}, k))(jax.random.key(1))
  expected = gaussian.min_loss(cfg, np.asarray(aux["t"]), SIGMA)
  np.testing.assert_allclose(np.asarray(aux["per_example"]), expected, rtol=0.06, atol=1e-4)
  np.testing.assert_allclose(float(loss), expected.mean(), rtol=0.02)
  # Any other predictor does worse.
  worse, _ = Diffusion(cfg).loss(lambda x, t, c: fn(x, t, c) * 1.1, x0, {}, jax.random.key(1))
  assert float(worse) > float(loss)


def test_min_snr_weighting_matches_its_definition():
  cfg = DiffusionConfig("ddpm", "eps", weighting="min_snr", min_snr_gamma=5.0)
  x0 = jnp.zeros((16, 4, 4))
  loss, aux = Diffusion(cfg).loss(lambda x, t, c: jnp.zeros_like(x), x0, {}, jax.random.key(2))
  table = schedules.ddpm_alphas_cumprod("linear")
  abar = table[np.round(np.asarray(aux["t"]) * 1000).astype(int)]
  snr = abar / (1 - abar)
  np.testing.assert_allclose(float(loss), np.mean(np.minimum(snr, 5.0) / snr
                                                  * np.asarray(aux["per_example"])), rtol=1e-5)


def test_conversions_round_trip():
  rng = np.random.default_rng(0)
  x0, eps = (jnp.asarray(rng.standard_normal((4, 10)), jnp.float32) for _ in range(2))
  abar = jnp.asarray([0.999, 0.7, 0.2, 0.01])
  x_t = schedules.ddpm_interpolate(x0, eps, abar)
  for prediction in ("eps", "x0", "v"):
    target = schedules.ddpm_target(x0, eps, abar, prediction)
    got_x0, got_eps = schedules.ddpm_x0_eps(target, x_t, abar, prediction)
    np.testing.assert_allclose(got_x0, x0, atol=2e-4)
    np.testing.assert_allclose(got_eps, eps, atol=2e-4)
  t = jnp.asarray([0.05, 0.3, 0.6, 0.95])
  x_t = schedules.flow_interpolate(x0, eps, t)
  for prediction, pred in (("velocity", eps - x0), ("x0", x0)):
    got_x0, got_eps = schedules.flow_x0_from(pred, x_t, t, prediction)
    np.testing.assert_allclose(got_x0, x0, atol=1e-4)
    np.testing.assert_allclose(got_eps, eps, atol=1e-4)
    np.testing.assert_allclose(schedules.flow_velocity(pred, x_t, t, prediction), eps - x0,
                               atol=1e-4)


def test_time_shift_and_token_scaling():
  t = np.linspace(0, 1, 11)
  np.testing.assert_allclose(schedules.time_shift(t, 1.0), t)
  shifted = schedules.time_shift(t, 3.0)
  assert shifted[0] == 0 and shifted[-1] == 1 and np.all(shifted[1:-1] > t[1:-1])
  assert schedules.shift_for_tokens(1024, 1.0, 256) == pytest.approx(2.0)
  assert schedules.shift_for_tokens(1024, 1.5, 0) == 1.5
  assert Diffusion(DiffusionConfig(shift_base_tokens=64), num_tokens=256).shift == 2.0
  # Shifted training times spend more time at high noise.
  k = jax.random.key(0)
  t_plain = schedules.logit_normal(k, (4096,))
  assert float(schedules.time_shift(t_plain, 3.0).mean()) > float(t_plain.mean()) + 0.1


def test_same_key_same_loss():
  cfg = DiffusionConfig("flow", "velocity")
  x0 = jnp.ones((4, 8))
  fn = lambda x, t, c: x * 0.5
  a = Diffusion(cfg).loss(fn, x0, {}, jax.random.key(7))[0]
  b = Diffusion(cfg).loss(fn, x0, {}, jax.random.key(7))[0]
  c = Diffusion(cfg).loss(fn, x0, {}, jax.random.key(8))[0]
  assert float(a) == float(b) and float(a) != float(c)


def test_uniform_share_of_training_times():
  """t_uniform=0.25 with a logit-normal peaked at high noise: a quarter of the times are
  uniform, so the low-noise tail that the logit-normal almost never reaches is trained."""
  x0 = jnp.zeros((4096, 1, 1, 1, 1))
  fn = lambda x, t, c: x

  def times(**kw):
    cfg = DiffusionConfig("flow", "x0", t_mean=1.5, **kw)
    return np.asarray(jax.jit(lambda k: Diffusion(cfg).loss(fn, x0, {}, k))(
        jax.random.key(0))[1]["t"])

  peaked, mixed = times(), times(t_uniform=0.25)
  assert (peaked < 0.25).mean() < 0.01
  np.testing.assert_allclose((mixed < 0.25).mean(), 0.25 * 0.25 + 0.75 * (peaked < 0.25).mean(),
                             atol=0.015)
  np.testing.assert_allclose((mixed != peaked).mean(), 0.25, atol=0.02)  # the rest unchanged


@pytest.mark.parametrize("kw,msg", [
    (dict(objective="score"), "diffusion.objective='score' is unknown"),
    (dict(objective="flow", prediction="eps"), "does not fit objective 'flow'"),
    (dict(objective="ddpm", prediction="eps", schedule="sqrt"), "schedule 'sqrt' is unknown"),
    (dict(weighting="p2"), "diffusion.weighting='p2' is unknown"),
    (dict(shift=0.0), "must be > 0"),
    (dict(objective="flow", learn_sigma=True), "learn_sigma=True needs objective='ddpm'"),
    (dict(precondition="edm"), "diffusion.precondition='edm' is unknown"),
    (dict(prediction="velocity", precondition="skip"), "precondition='skip' needs"),
    (dict(prediction="x0", weighting="skip"), "weighting='skip' needs"),
    (dict(prediction="x0", precondition="skip", sigma_data=0.0), "sigma_data=0.0 must be > 0"),
    (dict(t_uniform=1.5), "t_uniform=1.5 must be a share in"),
    (dict(objective="ddpm", prediction="eps", t_uniform=0.2), "with objective='ddpm'"),
])
def test_bad_diffusion_config_raises(kw, msg):
  with pytest.raises(ValueError, match=msg):
    DiffusionConfig(**kw)


def test_learned_sigma_vlb_is_zero_only_for_the_true_posterior():
  cfg = DiffusionConfig("ddpm", "eps", schedule="linear", learn_sigma=True)
  table = jnp.asarray(schedules.ddpm_alphas_cumprod("linear"), jnp.float32)
  x0 = MU + SIGMA * jax.random.normal(jax.random.key(0), (64, 8, 4))

  def oracle(var_out):
    """Knows x0, so its eps is exact; var_out -1 is the posterior variance."""
    def model_fn(x_t, t, cond):
      abar = table[jnp.round(t * 1000).astype(jnp.int32)][:, None, None]
      eps = (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
      return jnp.concatenate([eps, jnp.full_like(eps, var_out)], -1)
    return model_fn

  loss, aux = Diffusion(cfg).loss(oracle(-1.0), x0, {}, jax.random.key(1))
  np.testing.assert_allclose(np.asarray(aux["vlb"]), 0.0, atol=2e-6)
  assert float(loss) < 1e-5
  _, aux = Diffusion(cfg).loss(oracle(1.0), x0, {}, jax.random.key(1))
  # beta instead of the posterior variance: close at most times, not at small t.
  assert np.all(np.asarray(aux["vlb"]) >= 0) and float(np.max(aux["vlb"])) > 1e-4

  # The bound trains only the variance channel: the mean half gets no gradient from it.
  def vlb_only(scale):
    fn = lambda x, t, c: oracle(0.0)(x, t, c) * jnp.concatenate(
        [jnp.full(x.shape, scale), jnp.ones(x.shape)], -1)
    return jnp.mean(Diffusion(cfg).loss(fn, x0, {}, jax.random.key(1))[1]["vlb"])
  assert float(jax.grad(vlb_only)(1.0)) == 0.0


def test_skip_weighting_is_the_networks_own_error():
  """weighting='skip': the x0 error divided by c_out(t)^2, i.e. the plain squared error of
  the network output F in x0_hat = c_skip x_t + c_out F (EDM's loss weight)."""
  cfg = DiffusionConfig("flow", "x0", precondition="skip", sigma_data=0.5, weighting="skip")
  x0 = 0.5 * jax.random.normal(jax.random.key(0), (32, 6, 5))
  f = 0.3 * jax.random.normal(jax.random.key(1), (32, 6, 5))  # a fixed network output

  seen = {}

  def fn(x, t, c):
    seen["x_t"] = x
    c_skip, c_out = schedules.flow_precondition(t, 0.5)
    return c_skip[:, None, None] * x + c_out[:, None, None] * f

  loss, aux = Diffusion(cfg).loss(fn, x0, {}, jax.random.key(2))
  c_skip, c_out = (np.asarray(v)[:, None, None]
                   for v in schedules.flow_precondition(aux["t"], 0.5))
  target = (np.asarray(x0) - c_skip * np.asarray(seen["x_t"])) / c_out  # F's own target
  np.testing.assert_allclose(float(loss), np.mean(np.square(np.asarray(f) - target)), rtol=1e-3)
  t = np.linspace(0.0, 1.0, 5)
  c_skip, c_out = (np.asarray(v) for v in schedules.flow_precondition(t, 0.5))
  np.testing.assert_allclose(c_skip[[0, -1]], [1.0, 0.0])
  np.testing.assert_allclose(c_out[[0, -1]], [0.0, 0.5])
  # x0 ~ N(0, 0.5^2): c_skip x_t is the best linear guess of x0 and F's target has unit variance
  var = (1 - t[1:-1]) ** 2 * 0.25 + t[1:-1] ** 2
  np.testing.assert_allclose(c_skip[1:-1], (1 - t[1:-1]) * 0.25 / var, rtol=1e-6)
  np.testing.assert_allclose(0.25 - c_skip[1:-1] ** 2 * var, c_out[1:-1] ** 2, rtol=1e-5)


def test_motion_weight_adds_the_error_of_the_frame_to_frame_change():
  """``motion_weight`` adds the squared error of the change between consecutive frames
  (axis 1): an error that is the same in every frame adds nothing, flicker adds."""
  cfg = DiffusionConfig("flow", "x0", motion_weight=2.0)
  x0 = jax.random.normal(jax.random.key(0), (4, 4, 6, 6, 3))
  key = jax.random.key(1)
  static = jnp.zeros((1, 1, 6, 6, 3)).at[..., 0].set(0.5)  # the same error in every frame
  flicker = static * jnp.asarray([1.0, -1.0, 1.0, -1.0]).reshape(1, 4, 1, 1, 1)
  loss = lambda cfg, err: Diffusion(cfg).loss(lambda x, t, c: x0 + err, x0, {}, key)
  plain = DiffusionConfig("flow", "x0")
  (got, aux), (want, _) = loss(cfg, static), loss(plain, static)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  np.testing.assert_allclose(aux["motion"], 0.0, atol=1e-12)
  (got, aux), (want, _) = loss(cfg, flicker), loss(plain, flicker)
  # (+0.5 -> -0.5) between each of the 3 frame pairs, in a third of the channels
  np.testing.assert_allclose(aux["motion"], 1.0 / 3, rtol=1e-5)
  np.testing.assert_allclose(float(got), float(want) + 2.0 / 3, rtol=1e-5)
  # With given frames (frame conditioning) only pairs of generated frames count: frame 0
  # given, the jump between frames 0 and 1 is not charged, the one between 1 and 2 is.
  motion_error = losses._motion_error  # pylint: disable=protected-access
  keep = jnp.broadcast_to(jnp.asarray([0.0, 1.0, 1.0]).reshape(1, 3, 1, 1, 1), (1, 3, 2, 2, 1))
  for frame, want, want_all in ((0, 0.0, 0.5), (2, 1.0, 0.5)):
    err = jnp.zeros((1, 3, 2, 2, 1)).at[:, frame].set(1.0)
    np.testing.assert_allclose(motion_error(err, keep), [want])
    np.testing.assert_allclose(motion_error(err), [want_all])
  last = jnp.broadcast_to(jnp.asarray([1.0, 1.0, 0.0]).reshape(1, 3, 1, 1, 1), keep.shape)
  np.testing.assert_allclose(motion_error(err, last), [0.0])
  # ... and the loss passes its given frames on: frame 0 given and wrong alone, no charge.
  jump = static * jnp.asarray([1.0, -1.0, -1.0, -1.0]).reshape(1, 4, 1, 1, 1)
  given = dict(context=x0, context_mask=jnp.zeros((4, 4), bool).at[:, 0].set(True))
  _, aux = Diffusion(cfg).loss(lambda x, t, c: x0 + jump, x0, given, key)
  np.testing.assert_allclose(aux["motion"], 0.0, atol=1e-12)
  _, aux = loss(cfg, jump)
  np.testing.assert_allclose(aux["motion"], 1.0 / 9, rtol=1e-5)  # 1 of 3 pairs, 1 of 3 channels
  with pytest.raises(ValueError, match="motion_weight=-1"):
    DiffusionConfig("flow", "x0", motion_weight=-1.0)
