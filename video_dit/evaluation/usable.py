"""Usable samples, what a usable video-second costs, and best-of-N selection by identity.

A generated sample is *usable* when its identity similarity to its own reference
clears a threshold set from real clips and, on the synthetic data, the action probe
reads the prompted action. The threshold is a verifier's, calibrated on the real clips
of the same examples: the ``100 - FALSE_ACCEPT_PERCENT``-th percentile of their
similarity to *another* identity's reference (the same embedding as the generated
ones), so a usable sample is recognisably its reference person rather than someone
else, at a 5% false-accept rate. The stricter rule, "as recognisable as real footage"
(the ``THRESHOLD_PERCENTILE``-th percentile of the real clips' matched similarity:
about 95% of real clips pass it), is reported beside it as ``strict``. Real data has
no action labels: usable is identity alone there.

  cost per usable video-second = cost per generated video-second / usable fraction

Best-of-N samples N candidates per example and keeps the one its *selector* scores
most similar to the reference. Grading the kept videos with the ruler that picked
them overstates them (the max of N noisy readings), so on the synthetic data the
selector is a second identity probe, trained with another seed
(``SELECTOR_SEED``) and stored beside the evaluation's (``identity_selector``). Real
data has one face recognizer (dlib): it selects and grades, and the block says so.
The cost of a kept video is that of its N candidates (``count_candidates``).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np

from video_dit.evaluation import probes as probes_lib

THRESHOLD_PERCENTILE = 5.0   # strict: 95% of real clips pass
FALSE_ACCEPT_PERCENT = 5.0   # the verifier threshold: 5% of wrong-identity real pairs pass
SELECTOR_SEED = 1  # the evaluation's probes are trained with seed 0
SELECTOR = "identity_selector"

# Cost fields that grow with the number of candidates sampled per kept video.
_PER_SAMPLE = ("flops_per_sample", "seconds_per_sample", "calls_per_sample",
               "passes_per_sample", "_per_video_second")
_NOT_SCALED = ("video_seconds_per_sample",)  # a kept video is as long as one candidate


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
           real_action_ok=None, percentile: float = THRESHOLD_PERCENTILE,
           real_mismatched=None) -> dict:
  """The usable block from per-video matched similarities (NaN: not measurable, e.g. no
  face found; such a generated sample fails, such a real clip sets nothing), per-video
  action correctness (None: no action labels, identity alone) and the cost block.
  With ``real_mismatched`` (each real clip vs another identity's reference) the
  threshold is the verifier's (module doc) and the matched-percentile rule is the
  ``strict`` sub-block; without it, the matched-percentile rule is the threshold."""
  gen = np.asarray(gen_similarity, np.float64)
  real = np.asarray(real_similarity, np.float64)
  measured = real[np.isfinite(real)]
  if not len(measured):
    raise ValueError("no real clip has a measurable matched similarity: the usable "
                     "threshold is set from real clips")
  strict = None
  wrong = np.asarray([] if real_mismatched is None else real_mismatched, np.float64)
  wrong = wrong[np.isfinite(wrong)]
  if len(wrong):
    strict = usable(gen, real, action_ok, None, real_action_ok, percentile)
    strict = {k: strict[k] for k in ("threshold", "threshold_rule", "fraction",
                                     "fraction_ci95", "identity_fraction", "real_fraction")
              if k in strict}
    threshold = float(np.percentile(wrong, 100 - FALSE_ACCEPT_PERCENT))
  else:
    threshold = float(np.percentile(measured, percentile))
  ident_ok = np.isfinite(gen) & (gen >= threshold)
  ok = ident_ok if action_ok is None else ident_ok & np.asarray(action_ok, bool)
  n, k = len(ok), int(ok.sum())
  out = dict(
      threshold=threshold,
      threshold_rule=(f"{percentile:g}th percentile (numpy, linear) of the real clips' "
                      "matched similarity: each real clip vs its own reference, the same "
                      "embedding as the generated videos") if strict is None else (
                          f"{100 - FALSE_ACCEPT_PERCENT:g}th percentile of the real clips' "
                          "similarity to another identity's reference: a verifier "
                          f"accepting {FALSE_ACCEPT_PERCENT:g}% of wrong identities, "
                          "calibrated on real clips (strict: the matched rule)"),
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
               cost_note="cost per generated video-second / usable fraction" + (
                   f" ({cost['candidates_per_video']} candidates sampled per kept video)"
                   if "candidates_per_video" in cost else ""))
  if strict is not None:
    out["strict"] = strict
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
    wrong = real.get("per_video_mismatched")
    return usable(per(gen), per(real), action_ok, results.get("cost"), real_action_ok,
                  real_mismatched=None if wrong is None else
                  [np.nan if v is None else v for v in wrong])
  except ValueError as e:
    return dict(skipped=str(e))


# ----------------------------------------------------------------------------- best of N


def select_best(candidates, score: Callable[[np.ndarray], np.ndarray]):
  """(kept (n, ...), chosen (n,), scores (N, n)): per example, the candidate of
  ``candidates`` (N, n, T, H, W, C) that ``score`` (videos (n, ...) -> similarity to
  their references (n,), -inf when unmeasurable) rates highest; ties keep the first."""
  scores = np.stack([np.asarray(score(c), np.float64) for c in candidates])
  chosen = np.argmax(scores, axis=0)  # first maximum; all -inf -> candidate 0
  kept = np.asarray(candidates)[chosen, np.arange(scores.shape[1])]
  return kept, chosen, scores


def count_candidates(cost: dict, n: int) -> dict:
  """The cost block of a kept video that took ``n`` samples: per-sample and
  per-video-second cost times ``n`` (one candidate's under ``per_candidate``)."""
  if n == 1 or "skipped" in cost:
    return cost
  scaled = {k: v for k, v in cost.items()
            if k.endswith(_PER_SAMPLE) and k not in _NOT_SCALED
            and isinstance(v, (int, float)) and not isinstance(v, bool)}
  return dict(cost, **{k: v * n for k, v in scaled.items()}, candidates_per_video=n,
              per_candidate=scaled)


def selector_path(config, probe_dir: str | None) -> str:
  """Where the selector probe is kept: beside the evaluation's identity probe."""
  if probe_dir:
    return os.path.join(probe_dir, SELECTOR)
  return probes_lib.default_path(config.data.data_dir, SELECTOR,
                                 probes_lib.ProbeSpec.from_config(config))


def selector(config, faces, probe_dir, train_probes: bool, log) -> tuple[Callable, dict]:
  """(score function, description) of the identity selector for ``faces``' examples."""
  if config.data.dataset == "synthetic_faces":
    path = selector_path(config, probe_dir)
    try:
      probe = probes_lib.load_or_train(config, "identity", path, train=train_probes, log=log,
                                       seed=SELECTOR_SEED)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"best-of-N selects with a second identity probe: {e}; or "
                              "run with --train_probes") from e
    ref = probe.embed_images(faces)
    return (lambda videos: np.sum(probe.embed_clips(videos) * ref, -1)), dict(
        selector=(f"identity probe trained with seed {probe.scores.get('seed', '?')} "
                  f"({path}), not the evaluation's probe"),
        selector_probe=dict(probe.scores), selector_verified=probe.verified,
        bias=("selected and graded by two identity probes of the same architecture and "
              "training identities but different seeds: their errors are partly shared, so "
              "the graded identity may still be somewhat optimistic"))
  from video_dit.evaluation import face_id  # pylint: disable=g-import-not-at-top
  refs = [face_id.embed_face(f) for f in faces]

  def score(videos):
    out = np.full(len(videos), -np.inf)
    for i, video in enumerate(videos):
      found, _ = face_id.embed_frames(video)
      if refs[i] is not None and len(found):
        out[i] = face_id.similarity(found, refs[i])["cosine"]
    return out
  return score, dict(
      selector="dlib face recognizer (mean cosine over frames with a face)",
      bias=("selected and graded by the same recognizer (dlib, the only one): the identity "
            "and usable numbers of the kept videos are biased upward"))


def best_of(config, candidates, faces, probe_dir, train_probes: bool, log) -> tuple:
  """(kept videos (n, ...), the ``best_of`` result block) of ``candidates`` (N, n, ...)."""
  t = time.time()
  score, info = selector(config, faces, probe_dir, train_probes, log)
  kept, chosen, scores = select_best(candidates, score)
  finite = lambda x: [None if not np.isfinite(v) else float(v) for v in x]
  return kept, dict(
      n=int(len(candidates)), **info,
      chosen=chosen.tolist(),
      chosen_counts=np.bincount(chosen, minlength=len(candidates)).tolist(),
      selector_scores=[finite(s) for s in scores],
      selection_s=round(time.time() - t, 2),
      cost_note="the cost block counts every candidate's sampling; the selection "
                "(selection_s, host time) is not in it")
