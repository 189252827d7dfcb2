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

