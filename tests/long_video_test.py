"""The sliding-window sampler's bookkeeping: every frame made once, from what was made."""

import jax
import numpy as np
import pytest

from video_dit import long_video
from video_dit.long_video import Window


def test_plan_makes_each_frame_once_with_the_overlap_given():
  for total, win, overlap, known in ((32, 8, 4, 0), (30, 8, 2, 0), (20, 8, 6, 2), (8, 8, 2, 0),
                                     (26, 8, 4, 12), (16, 8, 2, 4)):
    windows = long_video.plan(total, win, overlap, known, tubelet=2)
    made = np.zeros(total, int)
    made[:known] = 1
    for w in windows:
      assert 0 <= w.start and w.start + win <= total and w.given < win
      assert (made[w.start:w.start + w.given] == 1).all()   # the context was made before
      assert w.given >= min(overlap, w.start + w.given)       # sees at least the overlap
      made[w.start + w.given:w.start + win] += 1
    assert (made == 1).all(), (total, win, overlap, known, windows)
  assert long_video.plan(32, 8, 4)[:3] == [Window(0, 0), Window(4, 4), Window(8, 4)]
  assert long_video.plan(14, 8, 4)[-1] == Window(6, 6)      # the last ends at the end
  assert long_video.plan(20, 8, 4, independent=True) == [Window(0, 0), Window(8, 0),
                                                          Window(16, 0)]


@pytest.mark.parametrize("args, words", [((31, 8, 4, 0, 2), "multiple of the model's tubelet"),
                                         ((32, 8, 8, 0, 2), "between 1 and 7"),
                                         ((6, 8, 2, 0, 2), "at least one window"),
                                         ((16, 8, 4, 16, 2), "nothing to make")])
def test_plan_rejects_what_cannot_work(args, words):
  with pytest.raises(ValueError, match=words):
    long_video.plan(*args[:4], tubelet=args[4])


def test_sample_passes_the_last_frames_and_writes_only_new_ones():
  calls = []

  def window(cond, key):  # a fake clip sampler: frame value = window index + 1
    calls.append(dict(cond=cond, key=key))
    out = np.full(cond["context"].shape, float(len(calls)), np.float32)
    return np.where(cond["context_mask"][..., None, None, None], cond["context"], out)

  given = np.full((2, 2, 1, 1, 1), -1.0, np.float32)
  video = long_video.sample(window, dict(face=np.zeros((2, 3))), jax.random.key(0), 14,
                            (8, 1, 1, 1), overlap=4, tubelet=2, given=given,
                            later_cond=dict(face=None))
  assert video.shape == (2, 14, 1, 1, 1)
  np.testing.assert_array_equal(video[0, :, 0, 0, 0],
                                [-1, -1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
  assert calls[0]["cond"]["context_mask"][0].tolist() == [True] * 2 + [False] * 6
  np.testing.assert_array_equal(calls[1]["cond"]["context"][0, :, 0, 0, 0],
                                [1, 1, 1, 1, 0, 0, 0, 0])  # window 1: frames 4..11, 4 given
  assert calls[1]["cond"]["context_mask"][0].tolist() == [True] * 4 + [False] * 4
  assert calls[0]["cond"]["face"] is not None and calls[1]["cond"]["face"] is None
  assert jax.random.key_data(calls[0]["key"]).tolist() == jax.random.key_data(
      jax.random.key(0)).tolist()
  assert not np.array_equal(jax.random.key_data(calls[1]["key"]),
                            jax.random.key_data(calls[0]["key"]))


def test_reused_noise_is_the_same_start_for_every_window():
  seen = []

  def window(cond, key, noise=None):
    seen.append(noise)
    return np.zeros(cond["context"].shape, np.float32)

  long_video.sample(window, dict(face=np.zeros((2, 3))), jax.random.key(0), 16, (8, 1, 1, 1),
                    overlap=4, tubelet=2, noise="reuse")
  assert len(seen) == 3 and seen[0].shape == (2, 8, 1, 1, 1)
  assert all(np.array_equal(s, seen[0]) for s in seen) and np.std(seen[0]) > 0.3
  with pytest.raises(ValueError, match="fresh"):
    long_video.sample(window, dict(face=np.zeros((2, 3))), jax.random.key(0), 16,
                      (8, 1, 1, 1), overlap=4, tubelet=2, noise="other")


def test_co_denoise_averages_the_windows_over_each_frame():
  # A fake model: each window's output is its input plus its own frame index (0..3)
  # times the condition: a frame two windows cover gets the mean of their two outputs.
  def model_fn(x, t, c):
    assert x.shape[1] == 4 and t.shape == (x.shape[0],) and c["s"].shape == (x.shape[0],)
    return x + c["s"][:, None, None] * np.arange(4.0)[None, :, None]

  x = np.random.default_rng(0).normal(size=(3, 8, 5)).astype(np.float32)
  s = np.array([1.0, 2.0, -1.0], np.float32)
  t = np.full((3,), 0.5, np.float32)
  out = np.asarray(long_video.co_denoise(model_fn, total=8, window=4, stride=2,
                                         taper=False)(x, t, dict(s=s)))
  # windows start at 0, 2, 4: frame f's own indices are f - start for each covering window
  local = np.array([0, 1, (2 + 0) / 2, (3 + 1) / 2, (2 + 0) / 2, (3 + 1) / 2, 2, 3])
  np.testing.assert_allclose(out, x + s[:, None, None] * local[None, :, None], atol=1e-6)
  # tapered: window weights 0.5, 1.5, 1.5, 0.5; frame 2 mixes index 2 (weight 1.5) of
  # the first window with index 0 (weight 0.5) of the second
  out = np.asarray(long_video.co_denoise(model_fn, total=8, window=4, stride=2)(
      x, t, dict(s=s)))
  local = np.array([0, 1, (1.5 * 2 + 0.5 * 0) / 2, (0.5 * 3 + 1.5 * 1) / 2,
                    (1.5 * 2 + 0.5 * 0) / 2, (0.5 * 3 + 1.5 * 1) / 2, 2, 3])
  np.testing.assert_allclose(out, x + s[:, None, None] * local[None, :, None], atol=1e-6)
  assert long_video.window_starts(14, 8, 4) == [0, 4, 6]   # the last ends at the end
  seen = []

  def drops(x, t, c):
    seen.append(np.asarray(c["drop_id"]))
    return x

  long_video.co_denoise(drops, total=8, window=4, stride=2, identity_after_first=False)(
      x, t, dict(s=s, drop_id=np.array([False, True, False])))
  np.testing.assert_array_equal(seen[-1], [False, True, False] + [True] * 6)  # 3 windows
  for stride in (0, 5, -1):  # a frame in no window would divide by zero
    with pytest.raises(ValueError, match="stride between 1 and 4"):
      long_video.co_denoise(model_fn, total=20, window=4, stride=stride)


def test_co_denoised_sampling_of_one_window_is_the_plain_clip():
  import dataclasses  # pylint: disable=g-import-not-at-top
  from tests import helpers  # pylint: disable=g-import-not-at-top
  from video_dit import sampling  # pylint: disable=g-import-not-at-top
  from video_dit.models import registry  # pylint: disable=g-import-not-at-top
  config = helpers.runlocal_config()
  model, params = helpers.init(config)
  params = helpers.perturb_zeros(params, keep=())
  built = registry.build_dit(config)
  sampler = dataclasses.replace(built.sampler, num_steps=2)
  cond = {k: v for k, v in registry.random_inputs(config, 2).items() if k not in ("x", "t")}
  window = built.shape[0]
  plain = sampling.make_sampler(model, built.diffusion, sampler, (2,) + built.shape)
  joint = sampling.make_sampler(model, built.diffusion, sampler, (2,) + built.shape,
                                windows=(window, window // 2))
  key = jax.random.key(3)
  np.testing.assert_allclose(np.asarray(joint(params, cond, key)),
                             np.asarray(plain(params, cond, key)), atol=1e-5)
  long_shape = (2, 2 * window) + built.shape[1:]
  video = np.asarray(sampling.make_sampler(model, built.diffusion, sampler, long_shape,
                                           windows=(window, window // 2))(params, cond, key))
  assert video.shape == long_shape and np.all(np.isfinite(video))
  with pytest.raises(ValueError, match="step cache"):
    sampling.make_sampler(model, built.diffusion,
                          dataclasses.replace(sampler, cache_threshold=0.1), long_shape,
                          windows=(window, window // 2))


def test_seam_ratio_is_one_when_boundaries_change_like_the_rest():
  # Each video changes by its own amount at every transition (a skewed spread over
  # videos, as generated videos have): no seam anywhere, so the ratio must be 1, which
  # a mean at the boundaries over a median inside the windows would not give.
  from video_dit.evaluation import long  # pylint: disable=g-import-not-at-top
  per_video = np.random.default_rng(0).lognormal(-4.0, 1.0, size=(40, 1))
  change = np.repeat(per_video, 31, axis=1)
  sims = np.full((40, 32), 0.5)
  cuts = long.boundaries(long_video.plan(32, 8, 4, 0, 2), 1, 32)
  s = long.summarise(sims, sims - 0.1, change, cuts, 8, 8.0, [4], 2)["4x"]
  assert abs(s["seam_ratio"] - 1.0) < 1e-9 and abs(s["seam_ratio_tubelet"] - 1.0) < 1e-9
  change[:, cuts - 1] *= 3.0  # a jump at every boundary
  s = long.summarise(sims, sims - 0.1, change, cuts, 8, 8.0, [4], 2)["4x"]
  assert abs(s["seam_ratio"] - 3.0) < 1e-9


def test_co_denoised_windows_refuse_a_causal_vae():
  # Its first latent frame stands for one pixel frame, the others for several: windows
  # of latent frames would not line up with pixel frames.
  from configs import faces_latent  # pylint: disable=g-import-not-at-top
  config = faces_latent.get_config("runlocal")
  with pytest.raises(ValueError, match="causal VAE"):
    long_video.Frames.of(config, [], 4 * config.data.frames, 0, "joint")
