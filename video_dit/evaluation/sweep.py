"""The identity-vs-prompt trade-off: identity gap and action accuracy over a grid of
text and identity guidance scales (one ``evaluate`` per grid point, same examples and
seed), written to ``W/eval/guidance_step_N_<examples>_<sampler settings>.json`` and drawn
by the report.

Stronger identity guidance pulls samples toward the reference face and can pull them
away from the prompt; this curve is what a user picks their scales from.
"""

from __future__ import annotations

import json
import os

import numpy as np

from video_dit.diffusion import SamplerConfig
from video_dit.evaluation import evaluate, naming


def _binomial_ci(p: float, n: int) -> list[float]:
  half = 1.96 * np.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))
  return [float(p - half), float(p + half)]


def check(text_scales, face_scales, num_videos: int) -> None:
  """Raises naming a bad grid (before anything runs)."""
  scales = [float(x) for x in list(text_scales) + list(face_scales)]
  if not text_scales or not face_scales or not all(np.isfinite(x) and x >= 0 for x in scales):
    raise ValueError(f"guidance sweep scales must be finite and >= 0, at least one of each; "
                     f"got text {list(text_scales)}, face {list(face_scales)}")
  if num_videos < 2:
    raise ValueError(f"a guidance sweep needs >= 2 videos per point (got {num_videos}): the "
                     "identity gap pairs videos of different identities")


def guidance_sweep(workdir: str, text_scales, face_scales, *, step: int | None = None,
                   num_videos: int = 32, split: str = "test", chunk: int = 8,
                   probe_dir: str | None = None, sampler: dict | None = None,
                   log=print) -> dict:
  """Evaluates identity and action at every (text, face) scale pair (``sampler``: the other
  sampler settings, default the checkpoint's); returns (and writes)
  ``dict(step, points=[dict(text_scale, face_scale, gap, gap_ci95, choice_accuracy,
  action_accuracy, action_ci95, chance)], path)``."""
  check(text_scales, face_scales, num_videos)
  text_scales, face_scales = [float(x) for x in text_scales], [float(x) for x in face_scales]
  points, result_step = [], step
  for ts in text_scales:
    for fs in face_scales:
      r = evaluate.evaluate(workdir, step=step, split=split, num_videos=num_videos,
                            metrics=("identity", "text"), num_gifs=0, chunk=chunk,
                            sampler=dict(sampler or {}, text_scale=ts, face_scale=fs),
                            probe_dir=probe_dir,
                            log=lambda *_: None)
      result_step, used = r["step"], r["sampler"]
      g, text = r["identity"].get("generated", {}), r["text"]
      if "gap" not in g or "accuracy" not in text:
        raise ValueError("the sweep needs the identity and action probes (synthetic data): "
                         f"{r['identity'].get('skipped') or text.get('skipped')}")
      points.append(dict(text_scale=ts, face_scale=fs, gap=g["gap"], gap_ci95=g["gap_ci95"],
                         choice_accuracy=g["choice_accuracy"],
                         action_accuracy=text["accuracy"],
                         action_ci95=_binomial_ci(text["accuracy"], text["n"]),
                         chance=text["chance"], n=text["n"]))
      log(f"text scale {ts:g}, face scale {fs:g}: identity gap {g['gap']:.3f}, "
          f"action accuracy {text['accuracy']:.1%}")
  out = dict(step=result_step, split=split, num_videos=num_videos, points=points,
             sampler=used, noise=evaluate.NOISE)
  out["path"] = sweep_path(workdir, result_step, split, num_videos, _sampler(used))
  tmp = f"{out['path']}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  os.replace(tmp, out["path"])
  return out


def sweep_path(workdir: str, step: int, split: str, num_videos: int, sampler) -> str:
  """The sweep's json (``sampler``: a SamplerConfig): a sweep of other examples or other
  sampler settings (the scales aside) is another file."""
  tag = naming.sampler_tag(sampler, scales=False)
  return os.path.join(workdir, "eval", f"guidance_step_{step}_{split}{num_videos}_{tag}.json")


def _sampler(fields: dict):
  """An evaluation json's 'sampler' block -> SamplerConfig."""
  fields = dict(fields, interval=None if fields.get("interval") is None
                else tuple(fields["interval"]))
  return SamplerConfig(**fields)
