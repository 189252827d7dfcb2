import numpy as np
import pytest

from tests import helpers
from video_dit.data import synthetic
from video_dit.evaluation import probes

SPEC = probes.ProbeSpec(synthetic.SyntheticSpec(num_identities=100, frames=8, height=32,
                                                width=32, face_size=32), frames=8, size=32)


@pytest.fixture(scope="module")
def identity_probe():
  return probes.train_probe("identity", SPEC, steps=150, log=None)


def test_identity_probe_separates_held_out_identities(identity_probe):
  s = identity_probe.scores
  assert s["num_identities"] == 20 and s["num_clips"] == 80  # the 20 test ids, 4 clips each
  assert s["roc_auc"] >= probes.MIN_AUC and identity_probe.verified
  assert s["matched_cosine"] > s["mismatched_cosine"] + 0.2


def test_identity_probe_never_trains_on_test_identities():
  rng = np.random.default_rng(0)
  batch = next(probes._train_stream(SPEC, rng, 64))  # pylint: disable=protected-access
  assert set(batch["identity"]) <= set(SPEC.data.identity_ids("train"))
  assert len(set(batch["identity"])) > 20


def test_save_load_round_trip_and_mismatch_errors(identity_probe, tmp_path):
  path = str(tmp_path / "probes" / "identity")
  identity_probe.save(path)
  loaded = probes.Probe.load(path)
  assert loaded.spec == SPEC and loaded.scores == identity_probe.scores
  faces = probes.render_clips(SPEC, [80, 81], [0, 0])["face"]
  np.testing.assert_allclose(loaded.embed_images(faces), identity_probe.embed_images(faces),
                             atol=1e-6)
  config = helpers.runlocal_config(**{"data.data_dir": str(tmp_path)})
  with pytest.raises(ValueError, match="was trained for"):
    probes.load_or_train(config, "identity", path, train=False)
  with pytest.raises(FileNotFoundError, match="train_identity_probe"):
    probes.Probe.load(str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="identity probe"):
    loaded.action_logits(np.zeros((1, 8, 32, 32, 3), np.uint8))


def test_unverified_probe_is_flagged(identity_probe):
  weak = probes.Probe("identity", SPEC, identity_probe.params, dict(roc_auc=0.9))
  assert not weak.verified


def test_action_probe_recognises_held_out_actions():
  probe = probes.train_probe("action", SPEC, steps=80, batch=16, log=None)
  assert probe.scores["accuracy"] > 0.6 > 6 * probe.scores["chance"]
  clips = probes.render_clips(SPEC, [90, 91], [0, 1])
  assert probe.action_logits(clips["video"]).shape == (2, probes.NUM_ACTIONS)
  with pytest.raises(ValueError, match="8-frame clips"):
    probe.action_logits(clips["video"][:, :4])


def test_roc_auc_matches_pair_counting():
  rng = np.random.default_rng(0)
  scores = np.round(rng.standard_normal(200), 1)  # with ties
  labels = rng.random(200) < 0.3
  pos, neg = scores[labels], scores[~labels]
  brute = np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None]))
  assert probes.roc_auc(scores, labels) == pytest.approx(brute)
  assert probes.roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
  assert probes.roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
  with pytest.raises(ValueError):
    probes.roc_auc([1, 2], [1, 1])


def test_the_identity_stream_renders_one_frame_per_clip_and_the_same_pixels():
  # The identity probe trains on one frame of each clip: rendering only that frame (8x
  # fewer faces drawn) must give the batches that rendering whole clips gave.
  spec = probes.ProbeSpec(SPEC.data, frames=4, stride=2, size=24)  # resized, strided
  a, b = np.random.default_rng(3), np.random.default_rng(3)
  whole = next(probes._train_stream(spec, a, 6))  # pylint: disable=protected-access
  t = a.integers(0, spec.frames, 6)  # what train_probe drew after each batch
  one = next(probes._train_stream(spec, b, 6, one_frame=True))  # pylint: disable=protected-access
  assert one["video"].shape == (6, 24, 24, 3)
  np.testing.assert_array_equal(one["video"], whole["video"][np.arange(6), t])
  for key in ("face", "identity", "action", "attributes"):
    np.testing.assert_array_equal(one[key], whole[key])
  assert a.integers(1 << 30) == b.integers(1 << 30)  # the generator's state moved alike
