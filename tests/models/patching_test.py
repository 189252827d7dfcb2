import numpy as np
import pytest

from video_dit.models import patching


@pytest.mark.parametrize("shape,patch", [
    ((1, 16, 24, 3), (1, 4, 8)),      # T=1 (image), non-square
    ((1, 8, 8, 4), (1, 1, 1)),
    ((8, 16, 32, 4), (2, 4, 4)),
    ((12, 24, 8, 3), (4, 2, 8)),
    ((6, 10, 14, 2), (3, 5, 7)),
])
def test_round_trip_exact(shape, patch):
  x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
  tokens = patching.patchify(x, patch)
  grid = patching.grid_shape(shape[:3], patch)
  assert tokens.shape == (2, np.prod(grid), np.prod(patch) * shape[3])
  np.testing.assert_array_equal(np.asarray(patching.unpatchify(tokens, grid, patch)), x)


def test_token_order_is_thw_row_major_and_tubelet_flattened_pt_ph_pw_c():
  x = np.random.default_rng(1).standard_normal((1, 4, 6, 8, 3)).astype(np.float32)
  patch = (2, 3, 4)
  tokens = np.asarray(patching.patchify(x, patch))
  grid = patching.grid_shape(x.shape[1:4], patch)  # (2, 2, 2)
  positions = np.asarray(patching.grid_positions(grid))
  for i, (t, h, w) in enumerate(positions.astype(int)):
    tube = x[0, t * 2:(t + 1) * 2, h * 3:(h + 1) * 3, w * 4:(w + 1) * 4]
    np.testing.assert_array_equal(tokens[0, i], tube.reshape(-1))
  assert positions.tolist()[:3] == [[0, 0, 0], [0, 0, 1], [0, 1, 0]]


@pytest.mark.parametrize("shape,patch,msg", [
    ((9, 16, 16), (2, 4, 4), "frames=9 is not divisible by the tubelet size 2"),
    ((8, 18, 16), (2, 4, 4), "height=18 is not divisible"),
    ((8, 16, 15), (2, 4, 4), "width=15 is not divisible"),
])
def test_not_divisible_raises(shape, patch, msg):
  with pytest.raises(ValueError, match=msg):
    patching.grid_shape(shape, patch)
