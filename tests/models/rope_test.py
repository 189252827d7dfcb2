import jax.numpy as jnp
import numpy as np
import pytest

from video_dit.models import rope


def _scores(q, k, positions, split):
  angles = rope.rope_angles(jnp.asarray(positions), split)
  qr, kr = rope.apply_rope(q, angles), rope.apply_rope(k, angles)
  return np.asarray(jnp.einsum("bqhd,bkhd->bhqk", qr, kr))


@pytest.mark.parametrize("offset", [(3.0, -5.0, 7.0), (0.5, 0.25, -1.5), (0.0, 11.0, 0.0)])
def test_scores_depend_only_on_relative_positions(offset):
  rng = np.random.default_rng(0)
  head_dim = 32
  split = rope.default_split(head_dim)
  q = jnp.asarray(rng.standard_normal((2, 20, 3, head_dim)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, 20, 3, head_dim)), jnp.float32)
  positions = rng.integers(0, 8, (20, 3)).astype(np.float32)
  base = _scores(q, k, positions, split)
  shifted = _scores(q, k, positions + np.asarray(offset, np.float32), split)
  np.testing.assert_allclose(shifted, base, atol=2e-4, rtol=1e-4)
  # Moving a single axis of some tokens (not all) does change the scores.
  moved = positions.copy()
  moved[:10, 1] += 3
  assert np.abs(_scores(q, k, moved, split) - base).max() > 1e-2


def test_each_axis_rotates_its_own_channels():
  split = (4, 6, 6)
  angles = np.asarray(rope.rope_angles(jnp.asarray([[1.0, 0.0, 0.0]]), split))
  assert np.all(angles[0, :2] != 0) and np.all(angles[0, 2:] == 0)
  angles = np.asarray(rope.rope_angles(jnp.asarray([[0.0, 0.0, 2.0]]), split))
  assert np.all(angles[0, :5] == 0) and np.all(angles[0, 5:] != 0)


def test_rope_preserves_norm():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 5, 2, 16)), jnp.float32)
  angles = rope.rope_angles(jnp.arange(15.0).reshape(5, 3), rope.default_split(16))
  np.testing.assert_allclose(np.linalg.norm(rope.apply_rope(x, angles), axis=-1),
                             np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("head_dim", [8, 16, 32, 64, 72, 96, 128])
def test_default_split_fits(head_dim):
  split = rope.check_split(rope.default_split(head_dim), head_dim)
  assert sum(split) == head_dim and all(s > 0 for s in split)


@pytest.mark.parametrize("split", [(16, 24, 25), (16, 24, 16), (2, 2)])
def test_bad_split_raises(split):
  with pytest.raises(ValueError, match="does not fit head_dim=64"):
    rope.check_split(split, 64)


def test_sincos_nd_is_distinct_per_position_and_padded():
  emb = np.asarray(rope.sincos_nd(jnp.asarray([[0.0, 0, 0], [0, 0, 1], [1, 0, 0]]), 20))
  assert emb.shape == (3, 20)
  assert np.all(emb[:, 18:] == 0)  # 20 is not a multiple of 6: two zero channels
  assert len({tuple(r) for r in emb.round(6)}) == 3
