"""The causal 3D video VAE: causality, the image path, shapes, and that it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import vae_synthetic
from video_dit.models import autoencoder, registry
from video_dit.models.autoencoder import VAEConfig, VideoVAE


def _init(cfg, shape, seed=0):
  model = VideoVAE(cfg)
  x = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (2,) + shape), jnp.float32)
  return model, jax.jit(model.init)(jax.random.key(0), x), x


TINY = VAEConfig(base=8, ch_mult=(1, 2, 2, 2), time_down=2, latent_channels=4, groups=4)


def test_changing_frame_k_never_changes_earlier_latents():
  model, params, x = _init(TINY, (9, 16, 16, 3))
  encode = jax.jit(lambda p, v: model.apply(p, v, method=model.encode)[0])
  z = np.asarray(encode(params, x))
  assert z.shape == (2, 3, 2, 2, 4)
  f = TINY.time_factor
  for k in range(9):
    z2 = np.asarray(encode(params, x.at[:, k].add(0.7)))
    changed = np.abs(z2 - z).max(axis=(0, 2, 3, 4)) > 0
    first = -(-k // f)  # latent j covers frames <= f * j
    assert not changed[:first].any(), (k, changed)
    assert changed[first], (k, changed)  # ...and the frame does reach its own latent


def test_first_frame_is_coded_alone_as_an_image():
  model, params, x = _init(TINY, (9, 16, 16, 3))
  encode = jax.jit(lambda p, v: model.apply(p, v, method=model.encode))
  video_mean, video_logvar = encode(params, x)
  image_mean, image_logvar = encode(params, x[:, :1])  # a T = 1 video
  assert image_mean.shape == (2, 1, 2, 2, 4)
  np.testing.assert_allclose(image_mean, video_mean[:, :1], atol=1e-5)
  np.testing.assert_allclose(image_logvar, video_logvar[:, :1], atol=1e-5)
  recon = jax.jit(lambda p, z: model.apply(p, z, method=model.decode))(params, image_mean)
  assert recon.shape == (2, 1, 16, 16, 3)


@pytest.mark.parametrize("ch_mult,time_down,frames,latent", [
    ((1, 2, 2, 2), 2, 9, (3, 2, 2, 4)),    # default: 4x time, 8x space
    ((1, 2, 2, 2), 2, 1, (1, 2, 2, 4)),    # an image
    ((1, 2, 2, 2), 1, 9, (5, 2, 2, 4)),    # 2x time
    ((1, 2, 2, 2), 0, 4, (4, 2, 2, 4)),    # no temporal compression
    ((1, 2), 1, 5, (3, 8, 8, 4)),          # 2x space
    ((1, 2, 2, 2, 2), 3, 17, (3, 1, 1, 4)),  # 8x time, 16x space
])
def test_shapes_for_every_compression(ch_mult, time_down, frames, latent):
  cfg = VAEConfig(base=4, ch_mult=ch_mult, time_down=time_down, latent_channels=4, groups=4)
  model, params, x = _init(cfg, (frames, 16, 16, 3))
  recon, mean, logvar = jax.jit(model.apply)(params, x)
  assert mean.shape[1:] == latent == cfg.latent_shape(x.shape[1:]) and logvar.shape == mean.shape
  assert recon.shape == x.shape


def test_bad_shapes_and_config_values_raise_with_the_fix():
  with pytest.raises(ValueError, match="1 \\+ a multiple of 4"):
    TINY.latent_shape((8, 16, 16, 3))
  config = vae_synthetic.get_config("runlocal")
  with config.unlocked():
    config.data.frames = 6
  with pytest.raises(ValueError, match="frames must be 1"):
    registry.build_vae(config)
  config = vae_synthetic.get_config("runlocal")
  with config.unlocked():
    config.vae.time_down = 5
  with pytest.raises(ValueError, match="vae.time_down=5"):
    registry.build_vae(config)


def test_a_short_training_run_lowers_reconstruction_error_clearly():
  config = vae_synthetic.get_config("runlocal")
  model, cfg = registry.build_vae(config)
  objective = autoencoder.VAEObjective(model, "l1", 1e-4)
  # Smooth, structured clips (moving blobs), like faces on a background.
  t, h, w = 5, 16, 16
  yy, xx = np.mgrid[0:h, 0:w] / h
  clips = []
  for i in range(2):
    frames = []
    for f in range(t):
      cx, cy = 0.3 + 0.1 * f / t + 0.1 * i, 0.5
      blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02)
      frames.append(np.stack([blob, 1 - blob, 0.5 * blob + 0.2 * i], -1) * 2 - 1)
    clips.append(frames)
  x = jnp.asarray(np.array(clips), jnp.float32)
  params = model.init(jax.random.key(0), x)
  tx = optax.adam(3e-3)
  opt = tx.init(params)
  keys = jax.random.split(jax.random.key(1), len(x))

  @jax.jit
  def step(params, opt):
    loss, g = jax.value_and_grad(lambda p: objective.loss(p, x, keys)[0])(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  psnr = jax.jit(lambda p: autoencoder.psnr(model.apply(p, x)[0], x).mean())
  before = float(psnr(params))
  for _ in range(80):
    params, opt, _ = step(params, opt)
  after = float(psnr(params))
  assert after > before + 6.0, (before, after)  # MSE down 4x or more
