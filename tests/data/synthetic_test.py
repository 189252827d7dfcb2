import numpy as np
import pytest

from video_dit.data import synthetic

SPEC = synthetic.SyntheticSpec(num_identities=10, clips_per_identity=2, frames=8, height=32,
                               width=48, face_size=32, seed=3)


def test_deterministic_per_seed():
  a = synthetic.make_example(SPEC, 4, 1)
  b = synthetic.make_example(SPEC, 4, 1)
  for k in ("video", "face", "attributes"):
    np.testing.assert_array_equal(a[k], b[k])
  assert (a["caption"], a["action"], a["identity"], a["key"]) == (
      b["caption"], b["action"], b["identity"], b["key"])
  other = synthetic.make_example(synthetic.SyntheticSpec(**{**SPEC.__dict__, "seed": 4}), 4, 1)
  assert not np.array_equal(a["video"], other["video"])


def test_shapes_dtypes_and_ids():
  ex = synthetic.make_example(SPEC, 2, 0)
  assert ex["video"].shape == (8, 32, 48, 3) and ex["video"].dtype == np.uint8
  assert ex["face"].shape == (32, 32, 3) and ex["face"].dtype == np.uint8
  assert ex["attributes"].shape == (len(synthetic.ATTRIBUTES),) >= (8,)
  assert len(synthetic.ACTIONS) >= 8
  assert ex["caption"] and 0 <= ex["action"] < len(synthetic.ACTIONS)
  assert ex["identity"] == 2
  # Anti-aliased: edges have in-between values, not just the flat palette colours.
  assert len(np.unique(ex["face"].reshape(-1, 3), axis=0)) > 50


def test_identity_is_independent_of_action_and_background():
  attrs = synthetic.identity_attributes(0, 7)
  bg = lambda: synthetic._background(np.random.default_rng(5), 32, 32)  # pylint: disable=protected-access
  clips = [synthetic.render_frames(attrs, synthetic.action_poses(a, 8), bg())
           for a in range(len(synthetic.ACTIONS))]
  # Every action starts from the same neutral frame, then each one moves differently.
  for clip in clips[1:]:
    np.testing.assert_array_equal(clip[0], clips[0][0])
  assert len({clip.tobytes() for clip in clips}) == len(clips)
  assert all(np.abs(clip.astype(int) - clip[:1]).max() > 50 for clip in clips)
  # A different identity in the same pose and background looks different.
  other = synthetic.render_frames(synthetic.identity_attributes(0, 8),
                                  synthetic.action_poses(0, 8), bg())
  assert np.abs(other[0].astype(int) - clips[0][0].astype(int)).mean() > 2


def test_every_attribute_changes_the_face():
  base = synthetic.identity_attributes(0, 1)
  ref = synthetic.render_reference(base, 64, np.random.default_rng(0))
  for name, n in synthetic.ATTRIBUTES.items():
    changed = dict(base, **{name: (base[name] + 1) % n})
    img = synthetic.render_reference(changed, 64, np.random.default_rng(0))
    assert np.abs(img.astype(int) - ref.astype(int)).sum() > 0, name


def test_attributes_are_drawn_independently():
  values = np.asarray([list(synthetic.identity_attributes(0, i).values()) for i in range(3000)])
  corr = np.corrcoef(values.T)
  off_diagonal = corr[~np.eye(len(corr), dtype=bool)]
  assert np.abs(off_diagonal).max() < 0.08
  for j, n in enumerate(synthetic.ATTRIBUTES.values()):  # every value is used
    assert set(values[:, j]) == set(range(n))


def test_reference_is_not_a_frame_of_the_video():
  ex = synthetic.make_example(synthetic.SyntheticSpec(frames=8, height=32, width=32,
                                                      face_size=32), 0, 0)
  diffs = [np.abs(ex["face"].astype(int) - f.astype(int)).mean() for f in ex["video"]]
  assert min(diffs) > 10


def test_train_and_test_identities_are_disjoint():
  train, test = SPEC.identity_ids("train"), SPEC.identity_ids("test")
  assert set(train).isdisjoint(test) and len(train) + len(test) == SPEC.num_identities
  assert {e["identity"] for e in synthetic.examples(SPEC, "test")} == set(test)
  assert sum(1 for _ in synthetic.examples(SPEC, "test")) == len(test) * 2


@pytest.mark.parametrize("kw,msg", [
    (dict(frames=4), "frames=4 is outside \\[8, 64\\]"),
    (dict(height=300), "height=300 is outside"),
    (dict(test_fraction=1.0), "test_fraction=1.0 must be in"),
    (dict(num_identities=1), "num_identities=1 must be >= 2"),
])
def test_bad_spec_raises(kw, msg):
  with pytest.raises(ValueError, match=msg):
    synthetic.SyntheticSpec(**kw)


def test_sizes_at_the_limits():
  for frames, size in ((8, 32), (64, 256)):
    spec = synthetic.SyntheticSpec(frames=frames, height=size, width=size, face_size=size)
    assert synthetic.make_example(spec, 0, 0)["video"].shape == (frames, size, size, 3)
