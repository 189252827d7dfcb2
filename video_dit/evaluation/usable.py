"""Usable samples and what a usable video-second costs.

A generated sample is *usable* when its identity similarity to its own reference
clears a threshold set from real clips and, on the synthetic data, the action probe
reads the prompted action. The threshold is the ``THRESHOLD_PERCENTILE``-th
percentile of the real clips' matched similarity (each real clip against its own
reference, the same embedding as the generated ones), so about 95% of real clips
pass it. Real data has no action labels: usable is identity alone there.

  cost per usable video-second = cost per generated video-second / usable fraction
"""

from __future__ import annotations

import numpy as np

THRESHOLD_PERCENTILE = 5.0


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
  """The Wilson score 95% interval of a binomial proportion k / n."""
  if n <= 0:
    return [0.0, 1.0]
  p = k / n
  denom = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denom
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return [float(max(0.0, center - half)), float(min(1.0, center + half))]


def usable(gen_similarity, real_similarity, action_ok=None, cost: dict | None = None,
           real_action_ok=None, percentile: float = THRESHOLD_PERCENTILE) -> dict:
  """The usable block from per-video matched similarities (NaN: not measurable, e.g. no
  face found; such a generated sample fails, such a real clip sets nothing), per-video
  action correctness (None: no action labels, identity alone) and the cost block."""
  gen = np.asarray(gen_similarity, np.float64)
  real = np.asarray(real_similarity, np.float64)
  measured = real[np.isfinite(real)]
  if not len(measured):
    raise ValueError("no real clip has a measurable matched similarity: the usable "
                     "threshold is set from real clips")
  threshold = float(np.percentile(measured, percentile))
  ident_ok = np.isfinite(gen) & (gen >= threshold)
  ok = ident_ok if action_ok is None else ident_ok & np.asarray(action_ok, bool)
  n, k = len(ok), int(ok.sum())
  out = dict(
      threshold=threshold,
      threshold_rule=(f"{percentile:g}th percentile (numpy, linear) of the real clips' "
                      "matched similarity: each real clip vs its own reference, the same "
                      "embedding as the generated videos"),
      real_n=int(len(measured)),
      criterion=("identity >= threshold (real data: no action labels, identity only)"
                 if action_ok is None else
                 "identity >= threshold and the action probe reads the prompted action"),
      fraction=k / n, fraction_ci95=wilson_interval(k, n), usable=k, n=n,
      unmeasured=int((~np.isfinite(gen)).sum()),  # no face found: counted as not usable
      identity_fraction=float(ident_ok.mean()),
      action_fraction=None if action_ok is None else float(np.mean(action_ok)))
  if real_action_ok is not None or action_ok is None:
    real_ok = np.isfinite(real) & (real >= threshold)
    if real_action_ok is not None:
      real_ok &= np.asarray(real_action_ok, bool)
    out["real_fraction"] = float(real_ok[np.isfinite(real)].mean())
  if cost is None or "skipped" in cost:
    why = "did not run" if cost is None else f"was skipped ({cost['skipped']})"
    out["cost_note"] = f"the cost metric {why}: no cost per usable second"
  elif k == 0:
    out.update(seconds_per_usable_second=None, tflops_per_usable_second=None,
               cost_note="no usable sample: the cost per usable second is unbounded")
  else:
    out.update(seconds_per_usable_second=cost["seconds_per_video_second"] / out["fraction"],
               tflops_per_usable_second=cost["tflops_per_video_second"] / out["fraction"],
               cost_note="cost per generated video-second / usable fraction")
  out["per_video"] = ok.tolist()
  return out


def usable_block(results: dict, has_actions: bool, actions=None) -> dict | None:
  """The usable block of an evaluation's results (None when identity was not asked for);
  skipped with the reason when a part it needs was."""
  ident = results.get("identity")
  if ident is None:
    return None
  if "skipped" in ident:
    return dict(skipped=f"the identity metric was skipped: {ident['skipped']}")
  per = lambda d: np.asarray([np.nan if v is None else v for v in d["per_video_matched"]],
                             np.float64)
  gen, real = ident.get("generated", {}), ident.get("real", {})
  if "per_video_matched" not in gen or "per_video_matched" not in real:
    return dict(skipped="the identity metric has no per-video similarities")
  action_ok = real_action_ok = None
  if has_actions:
    text = results.get("text")
    if text is None or "skipped" in text:
      why = "not asked for" if text is None else text["skipped"]
      return dict(skipped=f"usable on the synthetic data needs the text metric (action "
                          f"probe): {why}")
    actions = np.asarray(actions)
    action_ok = np.asarray(text["predicted"]) == actions
    real_action_ok = np.asarray(text["real_predicted"]) == actions
  try:
    return usable(per(gen), per(real), action_ok, results.get("cost"), real_action_ok)
  except ValueError as e:
    return dict(skipped=str(e))

