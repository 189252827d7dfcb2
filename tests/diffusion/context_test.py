"""Frame conditioning: the mask semantics in the model, the loss and the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from video_dit.diffusion import context as context_lib
from video_dit.models import registry


@pytest.fixture(scope="module")
def setup():
  config = helpers.runlocal_config(**{"train.context_rate": 0.5})
  built = registry.build_dit(config)
  model, params = helpers.init(config)
  params = helpers.perturb_zeros(params)
  inputs = registry.random_inputs(config, 2, seed=3)
  return config, built, model, params, inputs


def _context(inputs, given):
  x = inputs["x"]
  rng = np.random.default_rng(5)
  frames = rng.uniform(-1, 1, x.shape).astype(np.float32)
  return dict(context=frames, context_mask=context_lib.prefix_mask(x.shape[0], x.shape[1], given))


def test_config_derives_the_model_input_and_checks_values():
  assert registry.model_config(helpers.runlocal_config(**{"train.context_rate": 0.5})
                               ).frame_conditioning
  assert not registry.model_config(helpers.runlocal_config()).frame_conditioning
  for field, value, words in (("context_rate", 1.5, r"in \[0, 1\]"),
                              ("context_noise", 1.0, r"in \[0, 1\)")):
    with pytest.raises(ValueError, match=words):
      registry.model_config(helpers.runlocal_config(**{"train.context_rate": 0.5,
                                                       f"train.{field}": value}))
  with pytest.raises(ValueError, match="two token frames"):  # 8 frames, tubelet 8
    registry.model_config(helpers.runlocal_config(**{"train.context_rate": 0.5,
                                                     "model.patch": (8, 8, 8)}))


def test_a_model_without_it_refuses_given_frames():
  config = helpers.runlocal_config()
  model, params = helpers.init(config)
  inputs = registry.random_inputs(config, 1)
  with pytest.raises(ValueError, match="context_rate"):
    helpers.apply(model, params, dict(inputs, **_context(inputs, 2)))


def test_the_model_reads_given_frames_from_context_not_x(setup):
  _, _, model, params, inputs = setup
  ctx = _context(inputs, 2)
  out = helpers.apply(model, params, dict(inputs, **ctx))
  x2 = inputs["x"].copy()
  x2[:, :2] = 7.0  # whatever x holds at the given frames is not read
  assert np.allclose(helpers.apply(model, params, dict(inputs, x=x2, **ctx)), out, atol=1e-5)
  moved = dict(ctx, context=ctx["context"] + 0.5)
  assert not np.allclose(helpers.apply(model, params, dict(inputs, **moved)), out, atol=1e-3)


def test_an_empty_mask_is_plain_text_to_video(setup):
  _, _, model, params, inputs = setup
  plain = helpers.apply(model, params, inputs)
  empty = helpers.apply(model, params, dict(inputs, **_context(inputs, 0)))
  np.testing.assert_allclose(empty, plain, atol=1e-5)


def test_the_context_flag_and_level_change_the_prediction(setup):
  _, _, model, params, inputs = setup
  ctx = _context(inputs, 2)
  clean = helpers.apply(model, params, dict(inputs, **ctx))
  noised = helpers.apply(model, params, dict(inputs, **ctx, context_t=np.full((2,), 0.3,
                                                                               np.float32)))
  assert not np.allclose(clean[:, 2:], noised[:, 2:], atol=1e-4)


def test_the_loss_ignores_the_given_frames(setup):
  _, built, _, _, inputs = setup
  x0 = jnp.asarray(np.random.default_rng(0).standard_normal(inputs["x"].shape), jnp.float32)
  ctx = _context(inputs, 4)
  seen = {}

  def model_fn(x, t, cond):
    seen["x"], seen["cond"] = x, cond
    return jnp.zeros_like(x).at[:, :4].set(1e3)  # huge errors on the given frames only

  cond = dict(context=x0, context_mask=ctx["context_mask"])
  key = jax.random.key(0)
  _, aux = built.diffusion.loss(model_fn, x0, cond, key)
  np.testing.assert_array_equal(seen["x"][:, :4], x0[:, :4])  # clean given frames in x_t
  _, zero = built.diffusion.loss(lambda x, t, c: jnp.zeros_like(x), x0, cond, key)
  np.testing.assert_allclose(aux["per_example"], zero["per_example"], rtol=1e-6)
  _, whole = built.diffusion.loss(model_fn, x0, {}, key)  # without a mask they count
  assert (whole["per_example"] > 100 * aux["per_example"]).all()


def test_lightly_noised_context_is_on_the_flow_path(setup):
  _, built, _, _, inputs = setup
  x0 = jnp.ones(inputs["x"].shape, jnp.float32)
  seen = {}

  def model_fn(x, t, cond):
    seen["x"] = x
    return jnp.zeros_like(x)

  mask = context_lib.prefix_mask(2, x0.shape[1], 2)
  built.diffusion.loss(model_fn, x0, dict(context=x0, context_mask=mask,
                                          context_t=jnp.asarray([0.0, 0.5])),
                       jax.random.key(0))
  np.testing.assert_array_equal(seen["x"][0, :2], 1.0)  # level 0: clean
  given = np.asarray(seen["x"][1, :2])
  assert 0.3 < np.std(given) < 0.7 and abs(np.mean(given) - 0.5) < 0.1  # 0.5 x0 + 0.5 eps


def test_sampled_videos_keep_the_given_frames_exactly(setup):
  config, built, model, params, inputs = setup
  from video_dit import sampling
  shape = (2,) + built.shape
  sample = sampling.make_sampler(model, built.diffusion, built.sampler, shape)
  cond = {k: v for k, v in inputs.items() if k not in ("x", "t")}
  ctx = _context(inputs, 2)
  video = np.asarray(sample(params, dict(cond, **ctx), jax.random.key(0)))
  np.testing.assert_array_equal(video[:, :2], ctx["context"][:, :2])
  assert np.isfinite(video).all() and not np.allclose(video[:, 2:], ctx["context"][:, 2:])
  noised = np.asarray(sample(params, dict(cond, **ctx, context_t=np.full((2,), 0.2, np.float32)),
                             jax.random.key(0)))
  np.testing.assert_array_equal(noised[:, :2], ctx["context"][:, :2])


def test_draw_gives_whole_tubelets_and_never_every_frame():
  x0 = jnp.asarray(np.random.default_rng(0).standard_normal((256, 8, 4, 4, 3)), jnp.float32)
  out = jax.device_get(context_lib.draw(jax.random.key(1), x0, 2, 0.75, 0.1))
  mask = out["context_mask"]
  tokens = mask.reshape(256, 4, 2)
  assert (tokens.all(-1) == tokens.any(-1)).all()  # whole tubelets
  assert not mask.all(1).any()                      # something is left to generate
  assert 0.6 < mask.any(1).mean() < 0.9             # the rate
  assert (out["context_t"] >= 0).all() and (out["context_t"] <= 0.1).all()
  assert 0.3 < (out["context_t"] == 0).mean() < 0.7
  still = (mask[:, :2].all(1) & ~mask[:, 2:].any(1)
           & np.all(out["context"][:, 1] == out["context"][:, 0], axis=(1, 2, 3)))
  assert still.any()  # some examples get the first frame held over the first tubelet
  kept = ~np.all(out["context"][:, 1] == out["context"][:, 0], axis=(1, 2, 3))
  np.testing.assert_array_equal(out["context"][kept], np.asarray(x0)[kept])


def test_the_step_cache_indicator_ignores_the_given_frames(setup):
  _, _, model, params, inputs = setup
  ctx = _context(inputs, 4)
  ind = np.asarray(model.apply(params, **inputs, **ctx, cache="indicator"))
  plain = np.asarray(model.apply(params, **inputs, cache="indicator"))
  tokens = ind.shape[1] // 2  # 8 frames, tubelet 2: the first half of the tokens is given
  np.testing.assert_array_equal(ind[:, :tokens], 0.0)
  assert np.abs(ind[:, tokens:]).mean() > 0 and np.abs(plain[:, :tokens]).mean() > 0


def test_the_learned_variance_bound_ignores_the_given_frames():
  config = helpers.runlocal_config(**{"train.context_rate": 0.5, "train.context_noise": 0.0,
                                      "diffusion.objective": "ddpm",
                                      "diffusion.prediction": "eps",
                                      "diffusion.learn_sigma": True, "sample.sampler": "ddim"})
  built = registry.build_dit(config)
  x0 = jnp.asarray(np.random.default_rng(0).standard_normal((2,) + built.shape), jnp.float32)
  mask = context_lib.prefix_mask(2, x0.shape[1], 4)
  cond = dict(context=x0, context_mask=mask)

  def model_fn(var_on_given):
    def fn(x, t, c):
      var = jnp.zeros_like(x).at[:, :4].set(var_on_given)
      return jnp.concatenate([jnp.zeros_like(x), var], axis=-1)
    return fn

  key = jax.random.key(0)
  _, a = built.diffusion.loss(model_fn(0.0), x0, cond, key)
  _, b = built.diffusion.loss(model_fn(1.0), x0, cond, key)
  np.testing.assert_allclose(a["vlb"], b["vlb"], rtol=1e-6)
  _, c = built.diffusion.loss(model_fn(1.0), x0, {}, key)  # without the mask they count
  assert not np.allclose(a["vlb"], c["vlb"])
