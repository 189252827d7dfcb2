import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from video_dit.diffusion import guidance
from video_dit.models import registry


def toy_model(x, t, cond):
  """Text and identity both move the prediction, non-linearly, per example."""
  text = jnp.where(cond["drop_text"], 0.0, cond["text"])[:, None]
  ident = jnp.where(cond["drop_id"], 0.0, cond["face"])[:, None]
  return jnp.tanh(x * (1 + t[:, None]) + text) + ident * x ** 2 + text * ident


@pytest.fixture
def inputs():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
  t = jnp.asarray([0.1, 0.4, 0.6, 0.9])
  cond = {"text": jnp.asarray(rng.standard_normal(4), jnp.float32),
          "face": jnp.asarray(rng.standard_normal(4), jnp.float32)}
  return x, t, cond


def test_special_cases_and_batched_equals_separate(inputs):
  x, t, cond = inputs
  uu, tu, ti = (np.asarray(v) for v in guidance.separate_calls(toy_model, x, t, cond))
  g = lambda st, si, **kw: np.asarray(guidance.guided(toy_model, st, si, **kw)(x, t, cond))
  np.testing.assert_allclose(g(1.0, 1.0), ti, atol=1e-6)
  np.testing.assert_allclose(g(jnp.float32(1.0), jnp.float32(1.0)), ti, atol=1e-6)
  np.testing.assert_allclose(g(0.0, 0.0), uu, atol=1e-6)
  np.testing.assert_allclose(g(1.0, 0.0), tu, atol=1e-6)
  np.testing.assert_allclose(g(3.0, 2.0), uu + 3 * (tu - uu) + 2 * (ti - tu), atol=1e-5)
  np.testing.assert_allclose(g(4.0, 4.0), uu + 4 * (ti - uu), atol=1e-5)  # plain CFG
  # Guidance only inside the interval; the conditional prediction elsewhere.
  out = g(3.0, 2.0, interval=(0.3, 0.7))
  np.testing.assert_allclose(out[[0, 3]], ti[[0, 3]], atol=1e-6)
  np.testing.assert_allclose(out[[1, 2]], (uu + 3 * (tu - uu) + 2 * (ti - tu))[[1, 2]],
                             atol=1e-5)


def test_one_batched_model_call(inputs):
  x, t, cond = inputs
  calls = []

  def counting(x, t, c):
    calls.append(x.shape[0])
    return toy_model(x, t, c)

  guidance.guided(counting, 3.0, 2.0)(x, t, cond)
  assert calls == [12]
  # Text scale 1: v(null, null) cancels, so two branches (text; text + identity).
  calls.clear()
  out = guidance.guided(counting, 1.0, 3.0)(x, t, cond)
  assert calls == [8] and guidance.passes(1.0, 3.0) == 2
  uu, tu, ti = guidance.separate_calls(toy_model, x, t, cond)
  np.testing.assert_allclose(out, tu + 3 * (ti - tu), atol=1e-5)
  np.testing.assert_allclose(out, guidance.guided(toy_model, jnp.float32(1.0), 3.0)(x, t, cond),
                             atol=1e-5)  # traced scales: the 3-branch call, same value
  assert guidance.passes(1.0, 3.0, interval=(0.2, 0.8)) == 3


def test_guidance_with_the_video_dit():
  config = helpers.runlocal_config(**{"identity.gate": "none"})
  model, params = helpers.init(config)
  p = helpers.perturb_zeros(params)
  inputs = registry.random_inputs(config, 2)
  x, t = inputs.pop("x"), inputs.pop("t")
  model_fn = jax.jit(lambda x, t, c: model.apply(p, x, t, **c))
  uu, tu, ti = guidance.separate_calls(model_fn, x, t, inputs)
  assert np.abs(np.asarray(ti - tu)).max() > 1e-4 and np.abs(np.asarray(tu - uu)).max() > 1e-4
  batched = jax.jit(guidance.guided(model_fn, 2.5, 1.5))(x, t, inputs)
  np.testing.assert_allclose(batched, uu + 2.5 * (tu - uu) + 1.5 * (ti - tu), atol=1e-5)


def test_guiding_only_the_prediction_channels(inputs):
  x, t, cond = inputs
  uu, tu, ti = (np.asarray(v) for v in guidance.separate_calls(toy_model, x, t, cond))
  out = np.asarray(guidance.guided(toy_model, 3.0, 2.0, channels=4)(x, t, cond))
  np.testing.assert_allclose(out[:, :4], (uu + 3 * (tu - uu) + 2 * (ti - tu))[:, :4], atol=1e-5)
  np.testing.assert_allclose(out[:, 4:], ti[:, 4:], atol=1e-6)
