"""The output head: overlapping tapered windows (model.head='overlap')."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from video_dit.models import dit, flops, patching, registry


def test_overlap_head_blends_tapered_windows_with_no_token_borders():
  grid, patch, c = (2, 3, 4), (2, 4, 4), 3
  rng = np.random.default_rng(0)
  # Every token paints one colour per channel: the output is a partition of unity over
  # those colours, so a constant field is reproduced exactly...
  tokens = jnp.full((2, 24, 2 * 4 * 4 * 4 * c), 0.7)
  out = dit.overlap_unpatchify(tokens, grid, patch, (0, 2, 2))
  assert out.shape == (2, 4, 12, 16, c)
  np.testing.assert_allclose(out, 0.7, atol=1e-6)
  # ...and a field of per-token colours changes by at most 1/ph of the colour step per
  # pixel (a linear blend), never by the whole step at a token border as unpatchify does.
  colours = rng.uniform(-1, 1, (2, 24, 1, 1, 1, c)).astype(np.float32)
  tok = jnp.asarray(np.broadcast_to(colours, (2, 24, 2, 8, 8, c)).reshape(2, 24, -1))
  out = np.asarray(dit.overlap_unpatchify(tok, grid, patch, (0, 2, 2)))
  step = np.abs(np.diff(colours.reshape(2, 2, 3, 4, c), axis=3)).max()
  assert np.abs(np.diff(out, axis=3)).max() <= step / 4 + 1e-6
  plain = np.asarray(patching.unpatchify(jnp.asarray(np.broadcast_to(
      colours, (2, 24, 2, 4, 4, c)).reshape(2, 24, -1)), grid, patch))
  assert np.abs(np.diff(plain, axis=3)).max() > step / 2  # the plain head's borders
  # A token reaches half a tubelet beyond its own, and no further.
  bump = jnp.zeros_like(tokens).at[:, 5].set(1.0)  # token (t=0, i=1, j=1)
  moved = np.abs(np.asarray(dit.overlap_unpatchify(bump, grid, patch, (0, 2, 2)))).sum((0, 1, 4))
  rows, cols = np.nonzero(moved)
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 9, 2, 9)


@pytest.mark.parametrize("margin,margin_t", [(0, 0), (1, 1)])
def test_overlap_head_model_starts_at_zero_and_counts_its_flops(margin, margin_t):
  config = helpers.runlocal_config(**{"model.head": "overlap", "model.head_margin": margin,
                                      "model.head_margin_t": margin_t})
  cfg = registry.model_config(config)
  model, params = helpers.init(config)
  inputs = registry.random_inputs(config, 2)
  assert np.all(helpers.apply(model, params, inputs) == 0.0)
  out = helpers.apply(model, helpers.perturb_zeros(params), inputs)
  assert out.shape == (2,) + registry.video_shape(config) and np.abs(out).max() > 1e-3
  lowered = jax.jit(lambda p, i: model.apply(p, **i)).lower(params, inputs)
  assert flops.traced_matmul_flops(lowered) == 2 * flops.forward_flops(
      cfg, registry.video_shape(config), config.text.max_len)
  with pytest.raises(ValueError, match="model.head.*one of"):
    registry.model_config(helpers.runlocal_config(**{"model.head": "conv"}))
  with pytest.raises(ValueError, match="head_margin=0 needs tubelets at least 2"):
    registry.model_config(helpers.runlocal_config(**{"model.head": "overlap",
                                                     "model.patch": (1, 1, 1)}))
  with pytest.raises(ValueError, match="head_margin=5 needs"):
    registry.model_config(helpers.runlocal_config(**{"model.head": "overlap",
                                                     "model.head_margin": 5}))
  with pytest.raises(ValueError, match="head_margin_t=2 needs model.head='overlap'"):
    registry.model_config(helpers.runlocal_config(**{"model.head": "overlap",
                                                     "model.head_margin_t": 2}))


@pytest.mark.parametrize("margin", [(0, 1, 1), (0, 2, 1), (0, 4, 2), (1, 2, 1)])
def test_overlap_head_equals_painting_every_window_by_hand(margin):
  grid, patch, c = (3, 3, 2), (2, 8, 4), 2
  (mt, mh, mw), (gt, gh, gw), (pt, ph, pw) = margin, grid, patch
  kt, kh, kw = pt + 2 * mt, ph + 2 * mh, pw + 2 * mw
  tokens = np.random.default_rng(1).standard_normal((2, gt * gh * gw, kt * kh * kw * c))

  def ramp(p, m):
    u = np.arange(p + 2 * m) + 0.5
    return np.clip(np.minimum(u, p + 2 * m - u) / (2 * m), 0, 1) if m else np.ones(p)

  win = ramp(pt, mt)[:, None, None] * ramp(ph, mh)[None, :, None] * ramp(pw, mw)[None, None]
  canvas = np.zeros((2, gt * pt + 2 * mt, gh * ph + 2 * mh, gw * pw + 2 * mw, c))
  norm = np.zeros(canvas.shape[1:4])
  for n, (s, i, j) in enumerate(np.ndindex(gt, gh, gw)):
    at = np.s_[s * pt:s * pt + kt, i * ph:i * ph + kh, j * pw:j * pw + kw]
    canvas[(slice(None),) + at] += tokens[:, n].reshape(2, kt, kh, kw, c) * win[..., None]
    norm[at] += win
  expected = (canvas / norm[..., None])[:, mt:mt + gt * pt, mh:mh + gh * ph, mw:mw + gw * pw]
  out = dit.overlap_unpatchify(jnp.asarray(tokens, jnp.float32), grid, patch, margin)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Inside the video the weights already sum to 1 (renormalised only at the edges).
  inner = norm[2 * mt:norm.shape[0] - 2 * mt, 2 * mh:-2 * mh, 2 * mw:-2 * mw]
  assert inner.size and np.allclose(inner, 1.0)
