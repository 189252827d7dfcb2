"""Samplers against the closed-form optimal denoiser of Gaussian data."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.diffusion import gaussian
from video_dit import sharding
from video_dit.diffusion import Diffusion, DiffusionConfig, SamplerConfig, samplers

MU, SIGMA = 0.7, 0.5
SHAPE = (8, 16, 32)


@functools.lru_cache(maxsize=None)
def _noise():
  return jax.random.normal(jax.random.key(0), SHAPE)


def _sample(cfg, name, steps, **kw):
  d = Diffusion(cfg)
  fn = gaussian.optimal_model(cfg, MU, SIGMA)
  sampler = SamplerConfig(name=name, num_steps=steps, **kw)
  return jax.jit(lambda z: d.sample(fn, SHAPE, {}, jax.random.key(1), sampler, noise=z))(
      _noise())


def _transport_error(cfg, name, steps):
  """Max distance to the exact ODE solution, which maps noise z to MU + SIGMA z."""
  return float(jnp.abs(_sample(cfg, name, steps) - (MU + SIGMA * _noise())).max())


CASES = [
    (DiffusionConfig("flow", "velocity"), "euler", "heun"),
    (DiffusionConfig("flow", "x0"), "euler", "heun"),
    (DiffusionConfig("ddpm", "eps", schedule="cosine"), "ddim", "dpmpp_2m"),
    (DiffusionConfig("ddpm", "v", schedule="linear"), "ddim", "dpmpp_2m"),
    (DiffusionConfig("ddpm", "x0", schedule="cosine"), "ddim", "dpmpp_2m"),
]


@pytest.mark.parametrize("cfg,first,second", CASES)
def test_samples_match_gaussian_and_converge(cfg, first, second):
  for name in (first, second):
    x = np.asarray(_sample(cfg, name, 50))
    assert abs(x.mean() - MU) < 0.03 and abs(x.std() - SIGMA) < 0.03, (name, x.mean(), x.std())
    errors = [_transport_error(cfg, name, n) for n in (10, 20, 40)]
    # Halving the step size cuts the error by at least 1.5x (first order: ~2x).
    assert errors[0] > 1.5 * errors[1] > 2.25 * errors[2], (name, errors)
  # The higher-order sampler is more accurate at the same number of steps.
  assert _transport_error(cfg, second, 10) < _transport_error(cfg, first, 10)
  assert _transport_error(cfg, second, 20) < 0.5 * _transport_error(cfg, first, 20)


def test_first_order_samplers_converge_linearly_and_heun_quadratically():
  cfg = DiffusionConfig("flow", "velocity")
  e = {name: [_transport_error(cfg, name, n) for n in (10, 20, 40)]
       for name in ("euler", "heun")}
  assert 1.7 < e["euler"][1] / e["euler"][2] < 2.3  # error ~ 1/N
  assert e["heun"][1] / e["heun"][2] > 3.0           # error ~ 1/N^2


def test_ddim_with_noise_keeps_the_distribution():
  cfg = DiffusionConfig("ddpm", "eps", schedule="cosine")
  x = np.asarray(_sample(cfg, "ddim", 100, eta=1.0))
  assert abs(x.mean() - MU) < 0.03 and abs(x.std() - SIGMA) < 0.03
  deterministic = np.asarray(_sample(cfg, "ddim", 100))
  assert np.abs(x - deterministic).max() > 0.1  # eta=1 really adds noise


def test_ddim_inversion_round_trip():
  # The linear schedule: the cosine one ends at abar ~ 2e-9, too ill-conditioned
  # in float32 for an exact round trip through its last step.
  cfg = DiffusionConfig("ddpm", "eps", schedule="linear")
  d = Diffusion(cfg)
  fn = gaussian.optimal_model(cfg, MU, SIGMA)
  x0 = MU + SIGMA * jax.random.normal(jax.random.key(3), SHAPE)

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def round_trip_error(steps, refine):
    sampler = SamplerConfig(name="ddim", num_steps=steps)
    z = d.ddim_invert(fn, x0, {}, sampler, refine=refine)
    back = d.sample(fn, SHAPE, {}, jax.random.key(0), sampler, noise=z)
    return jnp.abs(back - x0).max(), z.std()

  errors = [float(round_trip_error(n, 0)[0]) for n in (25, 50, 100)]
  assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1  # plain inversion: O(1/N)
  error, z_std = round_trip_error(25, 10)
  assert float(error) < 1e-4 and abs(float(z_std) - 1.0) < 0.2  # refined: exact in f32


@pytest.mark.parametrize("cfg,sampler", [
    (DiffusionConfig("flow", "velocity"), SamplerConfig(name="heun", num_steps=8)),
    (DiffusionConfig("ddpm", "eps"), SamplerConfig(name="ddim", num_steps=8, eta=1.0)),
])
def test_same_key_same_samples_and_sharded_equals_single_device(cfg, sampler):
  d = Diffusion(cfg)
  fn = gaussian.optimal_model(cfg, MU, SIGMA)
  run = jax.jit(lambda key: d.sample(fn, SHAPE, {}, key, sampler))
  a, b = run(jax.random.key(5)), run(jax.random.key(5))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(run(jax.random.key(6)) - a)).max() > 0.1
  mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
  with jax.set_mesh(mesh):
    sharded = jax.jit(lambda key: d.sample(fn, SHAPE, {}, key, sampler))(jax.random.key(5))
  assert sharded.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(a), atol=1e-5)


@pytest.mark.parametrize("cfg,name,msg", [
    (DiffusionConfig("flow", "velocity"), "ddim", "sampler 'ddim' does not fit objective"),
    (DiffusionConfig("ddpm", "eps"), "heun", "sampler 'heun' does not fit objective"),
])
def test_sampler_objective_mismatch_raises(cfg, name, msg):
  with pytest.raises(ValueError, match=msg):
    Diffusion(cfg).sample(lambda x, t, c: x, SHAPE, {}, jax.random.key(0),
                          SamplerConfig(name=name))


def test_ancestral_ddpm_sampler_converges_to_the_distribution():
  cfg = DiffusionConfig("ddpm", "eps", schedule="cosine")
  stats = {}
  for n in (25, 1000):
    x = np.asarray(_sample(cfg, "ddpm", n))
    stats[n] = (abs(x.mean() - MU), abs(x.std() - SIGMA))
  assert stats[1000][0] < 0.02 and stats[1000][1] < 0.02
  assert stats[1000][1] < stats[25][1]  # the posterior-variance sampler under-disperses


def test_learned_sigma_sampler_uses_the_variance_output():
  cfg = DiffusionConfig("ddpm", "eps", schedule="cosine", learn_sigma=True)
  fn = gaussian.optimal_model(cfg, MU, SIGMA)
  d = Diffusion(cfg)

  def with_var(frac):
    model = lambda x, t, c: jnp.concatenate([fn(x, t, c), jnp.full_like(x, 2 * frac - 1)], -1)
    sampler = SamplerConfig(name="ddpm", num_steps=25, text_scale=3.0, id_scale=2.0)
    cond = {"dummy": jnp.zeros((SHAPE[0],))}
    return np.asarray(jax.jit(lambda k: d.sample(model, SHAPE, cond, k, sampler))(
        jax.random.key(0)))

  small, large = with_var(0.0), with_var(1.0)  # posterior variance vs beta
  assert small.std() < large.std()
  assert abs(large.std() - SIGMA) < abs(small.std() - SIGMA)  # beta fits better at 25 steps


def _cacheable(cfg, fills):
  """The optimal model with the DiT's step-cache modes (``VideoDiT._forward``): its
  'blocks' make the whole prediction (the tokens entering them are zero), its indicator
  is x at time t, its encoded conditions one zero per example; every full ('fill') pass
  that runs appends to ``fills``."""
  fn = gaussian.optimal_model(cfg, MU, SIGMA)

  def model_fn(x, t, cond, cache=None, residual=None, encoded=None):
    if cache == "encode":
      return {"c": jnp.zeros(x.shape[:1])}
    if cache in ("fill", "skip"):
      assert encoded["c"].shape == x.shape[:1]  # in the network's (guidance-tiled) batch
    if cache == "indicator":
      return x * (1.0 + t[:, None, None])
    if cache == "skip":
      return residual
    out = fn(x, t, cond)
    if cache == "fill":
      jax.debug.callback(lambda: fills.append(1))
      return out, out
    return out
  return model_fn


def _cached(threshold, steps=10, **kw):
  """(video, full calls the sampler counted, full passes that ran) of cached Euler."""
  cfg, fills = DiffusionConfig("flow", "velocity"), []
  sampler = SamplerConfig(**dict(dict(name="euler", num_steps=steps), **kw),
                          cache_threshold=threshold)
  video, stats = jax.jit(lambda z: Diffusion(cfg).sample(
      _cacheable(cfg, fills), SHAPE, {}, jax.random.key(1), sampler, noise=z,
      return_stats=True))(_noise())
  jax.effects_barrier()
  return np.asarray(video), int(stats["full_calls"]), len(fills)


def test_step_cache_off_or_never_skipping_is_the_plain_sampler():
  plain = np.asarray(_sample(DiffusionConfig("flow", "velocity"), "euler", 10))
  video, counted, ran = _cached(0.0)  # off: the plain sampler, no cache modes
  np.testing.assert_array_equal(video, plain)
  assert counted == 10 and ran == 0
  video, counted, ran = _cached(1e-9)  # the same steps, compiled apart (rounding differs)
  np.testing.assert_allclose(video, plain, atol=1e-6, rtol=0)
  assert counted == ran == 10
  # Shortcut: the same N uniform jumps (the step size goes to the model).
  plain = np.asarray(_sample(DiffusionConfig("flow", "velocity"), "shortcut", 8))
  video, counted, ran = _cached(1e-9, steps=8, name="shortcut")
  np.testing.assert_allclose(video, plain, atol=1e-6, rtol=0)
  assert counted == ran == 8 and _cached(1e9, steps=8, name="shortcut")[1] == 2
  # Uncached samplers report every call as a full one.
  cfg = DiffusionConfig("flow", "velocity")
  _, stats = Diffusion(cfg).sample(gaussian.optimal_model(cfg, MU, SIGMA), SHAPE, {},
                                   jax.random.key(0), SamplerConfig(num_steps=4),
                                   return_stats=True)
  assert int(stats["full_calls"]) == 4


def test_step_cache_skips_the_passes_it_counts_and_reuses_the_residual():
  counts = []
  for threshold in (0.1, 0.3, 1e9):
    video, counted, ran = _cached(threshold)
    assert counted == ran and np.all(np.isfinite(video)), threshold  # lax.cond really skips
    counts.append(counted)
  assert 10 > counts[0] > counts[1] > counts[2] == 2, counts  # first and last always full
  # Everything cached: step 0's velocity carries x to the last step, which is full.
  cfg, z = DiffusionConfig("flow", "velocity"), np.asarray(_noise())
  grid = samplers.flow_grid(10, Diffusion(cfg).shift)
  fn = gaussian.optimal_model(cfg, MU, SIGMA)
  v = lambda x, t: np.asarray(fn(jnp.asarray(x), jnp.full((SHAPE[0],), t, jnp.float32), {}))
  x = z + (grid[-2] - grid[0]) * v(z, grid[0])
  want = x + (grid[-1] - grid[-2]) * v(x, grid[-2])
  np.testing.assert_allclose(_cached(1e9)[0], want, atol=1e-5)
  # The (tiled, 3x batch) guidance state: this model ignores the conditions, so guided
  # sampling gives the same video and the same decisions.
  video, counted, ran = _cached(0.3, text_scale=3.0, id_scale=2.0)
  assert counted == ran == counts[1]
  np.testing.assert_allclose(video, _cached(0.3)[0], atol=1e-5)


def test_step_cache_sharded_equals_single_device():
  cfg = DiffusionConfig("flow", "velocity")
  sampler = SamplerConfig(name="euler", num_steps=10, cache_threshold=0.3, text_scale=3.0)
  run = jax.jit(lambda z: Diffusion(cfg).sample(_cacheable(cfg, []), SHAPE, {},
                                                jax.random.key(1), sampler, noise=z,
                                                return_stats=True))
  single, stats = run(_noise())
  with jax.set_mesh(sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))):
    sharded, sharded_stats = run(_noise())
  assert sharded.sharding.spec[0] == ("data", "fsdp")
  assert int(sharded_stats["full_calls"]) == int(stats["full_calls"]) < 10
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), atol=1e-5)


@pytest.mark.parametrize("kw,objective,msg", [
    (dict(cache_threshold=-0.1), "flow", r"cache_threshold=-0.1 \(--cache_threshold\) must "
                                         r"be a finite number >= 0"),
    (dict(cache_threshold=float("nan")), "flow", "cache_threshold=nan"),
    (dict(cache_threshold=0.1, name="heun"), "flow",
     "cache_threshold=0.1 works with sampler 'euler' or 'shortcut', not 'heun'; use "
     "--sampler=euler or --cache_threshold=0"),
    (dict(cache_threshold=0.1, name="ddim"), "ddpm", "not 'ddim'"),
])
def test_bad_cache_threshold_raises(kw, objective, msg):
  with pytest.raises(ValueError, match=msg):
    SamplerConfig(**kw).check(objective)


def test_cache_threshold_from_a_config_that_predates_it():
  from tests import helpers  # pylint: disable=g-import-not-at-top
  sample = helpers.runlocal_config().sample
  assert SamplerConfig.from_config(sample).cache_threshold == 0.0
  old = ml_collections.ConfigDict({k: v for k, v in sample.items() if k != "cache_threshold"})
  assert SamplerConfig.from_config(old).cache_threshold == 0.0
  sample.cache_threshold = 0.1
  assert SamplerConfig.from_config(sample).cache_threshold == 0.1
