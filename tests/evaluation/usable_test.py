import numpy as np
import pytest

from video_dit.evaluation import usable

COST = dict(seconds_per_video_second=2.0, tflops_per_video_second=3.0)


def test_wilson_interval():
  lo, hi = usable.wilson_interval(5, 10)
  assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
  lo, hi = usable.wilson_interval(0, 10)
  assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
  assert usable.wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_usable_needs_identity_over_the_real_5th_percentile_and_the_action():
  real = np.concatenate([np.linspace(0.0, 1.0, 101), [np.nan]])  # no face: left out
  gen = np.array([0.04, 0.05, 0.5, 0.9, np.nan])
  action_ok = np.array([True, True, False, True, True])
  real_action_ok = np.ones(102, bool)
  u = usable.usable(gen, real, action_ok, cost=COST, real_action_ok=real_action_ok)
  assert u["threshold"] == pytest.approx(0.05) and u["real_n"] == 101
  assert "5th percentile" in u["threshold_rule"] and "action" in u["criterion"]
  # Identity alone: 0.05, 0.5, 0.9 pass (>=); an unmeasurable sample (no face) fails.
  assert u["per_video"] == [False, True, False, True, False]
  assert u["identity_fraction"] == pytest.approx(3 / 5) and u["unmeasured"] == 1
  assert u["action_fraction"] == pytest.approx(4 / 5)
  assert u["fraction"] == pytest.approx(2 / 5) and u["usable"] == 2 and u["n"] == 5
  assert u["fraction_ci95"] == pytest.approx(usable.wilson_interval(2, 5))
  # Cost per usable second = cost per generated second / usable fraction.
  assert u["seconds_per_usable_second"] == pytest.approx(2.0 / 0.4)
  assert u["tflops_per_usable_second"] == pytest.approx(3.0 / 0.4)
  # By construction about 95% of real clips pass the identity test.
  assert u["real_fraction"] == pytest.approx(96 / 101)


def test_usable_without_action_labels_is_identity_alone():
  u = usable.usable(np.array([0.2, 0.8]), np.array([0.5, 0.6, 0.7]), None, cost=None)
  assert u["per_video"] == [False, True] and u["fraction"] == 0.5
  assert "identity only" in u["criterion"] and u["action_fraction"] is None
  assert "seconds_per_usable_second" not in u and "cost" in u["cost_note"]


def test_zero_usable_fraction_has_no_cost_per_usable_second():
  u = usable.usable(np.array([0.1, 0.2]), np.array([0.5, 0.6]), np.array([True, True]),
                    cost=COST)
  assert u["fraction"] == 0.0 and u["fraction_ci95"][0] == 0.0
  assert u["seconds_per_usable_second"] is None and u["tflops_per_usable_second"] is None
  assert "no usable sample" in u["cost_note"]


def test_usable_without_real_similarities_raises():
  with pytest.raises(ValueError, match="no real clip"):
    usable.usable(np.array([0.1]), np.array([np.nan]), None)


def test_usable_block_skips_with_the_identity_metric():
  assert usable.usable_block({}, has_actions=False) is None  # identity not asked for
  skipped = usable.usable_block({"identity": {"skipped": "AUC 0.8 < 0.95"}}, has_actions=True)
  assert "AUC 0.8" in skipped["skipped"]
  ident = {"generated": {"per_video_matched": [0.9, 0.1]},
           "real": {"per_video_matched": [0.8, 0.9]}}
  out = usable.usable_block({"identity": ident, "text": {"skipped": "no probe"}},
                            has_actions=True)
  assert "text" in out["skipped"]
  out = usable.usable_block({"identity": ident, "text": {"skipped": "no labels"}},
                            has_actions=False)
  assert out["per_video"] == [True, False] and "identity only" in out["criterion"]
  text = {"predicted": [3, 3], "real_predicted": [3, 2], "actions": ["a"]}
  out = usable.usable_block({"identity": ident, "text": text, "cost": COST}, has_actions=True,
                            actions=np.array([3, 3]))
  assert out["per_video"] == [True, False] and out["seconds_per_usable_second"] == 4.0


def test_best_of_keeps_the_highest_scoring_candidate():
  # Candidate k of example i is a video filled with 10 * k + i.
  n_cand, n = 3, 4
  videos = (10 * np.arange(n_cand)[:, None] + np.arange(n)[None]).astype(np.uint8)
  videos = np.broadcast_to(videos[..., None, None, None, None], (n_cand, n, 2, 4, 4, 3))
  table = np.array([[0.1, 0.9, 0.5, -np.inf],
                    [0.3, 0.2, 0.5, -np.inf],
                    [0.2, 0.1, 0.7, -np.inf]])
  calls = []

  def score(v):  # a fake identity scorer: reads the candidate back from the pixels
    calls.append(v.shape)
    k, i = v[:, 0, 0, 0, 0] // 10, v[:, 0, 0, 0, 0] % 10
    return table[k, i]

  kept, chosen, scores = usable.select_best(videos, score)
  assert calls == [(n, 2, 4, 4, 3)] * n_cand  # one call per candidate, every example
  # Ties and all-unmeasurable examples keep the first candidate.
  assert chosen.tolist() == [1, 0, 2, 0]
  np.testing.assert_array_equal(kept, videos[chosen, np.arange(n)])
  np.testing.assert_array_equal(scores, table)


def test_cost_counts_every_candidate():
  cost = dict(flops_per_sample=10.0, dit_flops_per_sample=8.0, decode_flops_per_sample=2.0,
              matmul_flops_per_sample=7.0, seconds_per_sample=2.0,
              decode_seconds_per_sample=0.5, video_seconds_per_sample=2.0,
              seconds_per_video_second=1.0, tflops_per_video_second=5.0,
              model_calls_per_sample=4, network_passes_per_sample=12, first_call_s=9.0)
  assert usable.count_candidates(cost, 1) == cost  # the default changes nothing
  c = usable.count_candidates(cost, 3)
  assert c["candidates_per_video"] == 3
  for key in ("flops_per_sample", "dit_flops_per_sample", "decode_flops_per_sample",
              "matmul_flops_per_sample", "seconds_per_sample", "decode_seconds_per_sample",
              "seconds_per_video_second", "tflops_per_video_second", "model_calls_per_sample",
              "network_passes_per_sample"):
    assert c[key] == 3 * cost[key] and c["per_candidate"][key] == cost[key], key
  # A kept video is as long as one candidate; compiling happens once.
  assert c["video_seconds_per_sample"] == 2.0 and c["first_call_s"] == 9.0
  assert usable.count_candidates({"skipped": "x"}, 3) == {"skipped": "x"}
  u = usable.usable(np.array([0.9, 0.1]), np.array([0.5, 0.6]), None, cost=c)
  assert u["seconds_per_usable_second"] == pytest.approx(3 * 1.0 / 0.5)


def test_with_wrong_identity_pairs_the_threshold_is_a_verifiers():
  real = np.linspace(0.80, 0.99, 20)
  wrong = np.linspace(0.10, 0.50, 21)  # real clips vs another identity's reference
  gen = np.array([0.20, 0.49, 0.55, 0.79, 0.95])
  out = usable.usable(gen, real, real_mismatched=wrong)
  assert out["threshold"] == pytest.approx(np.percentile(wrong, 95))  # 0.48
  assert out["fraction"] == pytest.approx(4 / 5) and "verifier" in out["threshold_rule"]
  strict = out["strict"]  # as recognisable as real footage: only the last one
  assert strict["threshold"] == pytest.approx(np.percentile(real, 5))
  assert strict["fraction"] == pytest.approx(1 / 5)
