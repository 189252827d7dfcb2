"""Quality against cost: identity gap, action accuracy, FVD and cost per usable second
over network passes per sample, for every way this codebase makes sampling cheaper.

    plain      the trained DiT, Euler with the config's dual guidance, N steps (3N
               passes; 2N at text scale 1)
    cache      the same with step caching (``sample.cache_threshold``): passes measured
    one_pass   a guidance-distilled student (``task='guidance_distill'``): N passes
    shortcut   a few-step student (``task='shortcut'``): N jumps of 1/N, N passes
    best_of    a setting above, the best of K candidates by identity (K x its cost)

Each point is one ``evaluate`` on the same held-out examples with the same seed (a
point already evaluated is read back, so an interrupted curve resumes), and the curve
is written to ``W/eval/cost_curve_<examples>.json`` of the first workdir; the report
(``report.write_report(curve=...)``) draws it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from video_dit.evaluation import evaluate, naming
from video_dit import workdir as workdir_lib

METHODS = ("plain", "cache", "one_pass", "shortcut")
CURVE_METRICS = ("fvd", "identity", "text", "cost")


def points(teacher: str, guidance: str | None = None, shortcut: str | None = None,
           steps=(1, 2, 4, 8, 16, 32), cache_thresholds=(), cache_steps: int = 32,
           best_of=(), one_pass_steps=None, shortcut_steps=None) -> list[dict]:
  """The curve's points: ``dict(method, workdir, sampler, best_of, label)``; the
  students' step counts default to ``steps``. ``best_of``: (method, steps, K) triples."""
  out = [dict(method="plain", workdir=teacher, sampler=dict(num_steps=n)) for n in steps]
  out += [dict(method="cache", workdir=teacher,
               sampler=dict(num_steps=cache_steps, cache_threshold=float(c)))
          for c in cache_thresholds]
  if guidance:
    out += [dict(method="one_pass", workdir=guidance, sampler=dict(num_steps=n))
            for n in one_pass_steps or steps]
  if shortcut:
    out += [dict(method="shortcut", workdir=shortcut, sampler=dict(num_steps=n))
            for n in shortcut_steps or steps]
  dirs = dict(plain=teacher, one_pass=guidance, shortcut=shortcut)
  for method, n, k in best_of:
    if not dirs.get(method):
      raise ValueError(f"best-of point ({method}, {n}, {k}) needs that method's workdir")
    out.append(dict(method=method, workdir=dirs[method], sampler=dict(num_steps=n),
                    best_of=int(k)))
  for p in out:
    p.setdefault("best_of", 1)
    s = p["sampler"]
    p["label"] = (f"{p['method']} {s['num_steps']} steps"
                  + (f" cache {s['cache_threshold']:g}" if "cache_threshold" in s else "")
                  + (f" best of {p['best_of']}" if p["best_of"] > 1 else ""))
  return out


def check(pts: list[dict]) -> None:
  """Every workdir has a checkpoint and every sampler setting builds (before any run)."""
  from video_dit.models import registry  # pylint: disable=g-import-not-at-top
  for p in pts:
    if workdir_lib.latest_step(p["workdir"]) is None:
      raise FileNotFoundError(f"{p['label']}: {p['workdir']} has no checkpoint")
    config = workdir_lib.load_config(p["workdir"])
    config.sample.update(p["sampler"])
    registry.build_dit(config)


def row(point: dict, r: dict) -> dict:
  """One point of the curve from its evaluation result."""
  cost, usable = r.get("cost", {}), r.get("usable", {})
  ident = r.get("identity", {}).get("generated", {})
  text, fvd = r.get("text", {}), r.get("fvd", {})
  # Measured (step caching skips some); a best-of cost block already counts every candidate.
  passes = cost.get("measured_network_passes_per_sample",
                    cost.get("network_passes_per_sample"))
  return dict(method=point["method"], label=point["label"], workdir=point["workdir"],
              sampler=point["sampler"], best_of=point["best_of"], result=r.get("path"),
              network_passes=passes, gap=ident.get("gap"), gap_ci95=ident.get("gap_ci95"),
              choice_accuracy=ident.get("choice_accuracy"),
              action_accuracy=text.get("accuracy"), fvd=fvd.get("fvd"),
              usable_fraction=usable.get("fraction"),
              usable_ci95=usable.get("fraction_ci95"),
              seconds_per_video_second=cost.get("seconds_per_video_second"),
              seconds_per_usable_second=usable.get("seconds_per_usable_second"),
              tflops_per_usable_second=usable.get("tflops_per_usable_second"))


def cost_curve(pts: list[dict], *, num_videos: int = 64, chunk: int = 32,
               probe_dir: str | None = None, log=print) -> dict:
  """Evaluates every point (or reads its result back); returns and writes the curve."""
  check(pts)
  rows = []
  for i, p in enumerate(pts):
    config = workdir_lib.load_config(p["workdir"])
    config.sample.update(p["sampler"])
    step = workdir_lib.latest_step(p["workdir"])
    path = naming.result_path(p["workdir"], config, step, num_videos,
                                best_of=p["best_of"])
    r = None
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        r = json.load(f)
      if not set(CURVE_METRICS) <= set(r) or not evaluate.reusable(r):
        r = None
    if r is None:
      log(f"[{i + 1}/{len(pts)}] {p['label']}: evaluating {num_videos} held-out examples")
      r = evaluate.evaluate(p["workdir"], num_videos=num_videos, sampler=p["sampler"],
                            metrics=CURVE_METRICS, chunk=chunk, num_gifs=0,
                            probe_dir=probe_dir, best_of=p["best_of"], log=lambda *_: None)
    rows.append(row(p, r))
    q = rows[-1]
    log(f"[{i + 1}/{len(pts)}] {p['label']}: {q['network_passes']} passes, identity gap "
        f"{_f(q['gap'])}, action {_f(q['action_accuracy'])}, FVD {_f(q['fvd'], 0)}, usable "
        f"{_f(q['usable_fraction'])}, s per usable second {_f(q['seconds_per_usable_second'])}")
  out = dict(num_videos=num_videos, points=rows)
  out["path"] = os.path.join(pts[0]["workdir"], "eval", f"cost_curve_{num_videos}.json")
  os.makedirs(os.path.dirname(out["path"]), exist_ok=True)
  tmp = f"{out['path']}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  os.replace(tmp, out["path"])
  return out


def _f(v, digits=3) -> str:
  return "n/a" if v is None else f"{v:.{digits}f}"


def baseline(curve: dict, method: str = "plain") -> dict | None:
  """The most expensive point of ``method`` (today's default sampler)."""
  rows = [r for r in curve["points"] if r["method"] == method and r["best_of"] == 1
          and r["network_passes"]]
  return max(rows, key=lambda r: r["network_passes"]) if rows else None


def table(curve: dict) -> list[dict]:
  """Each point beside the baseline: cost per usable second as a ratio (x cheaper) and
  identity gap / FVD relative to it."""
  base = baseline(curve)
  out = []
  for r in curve["points"]:
    t = dict(r)
    if base is not None:
      if r["seconds_per_usable_second"] and base["seconds_per_usable_second"]:
        t["cheaper"] = base["seconds_per_usable_second"] / r["seconds_per_usable_second"]
      if r["gap"] is not None and base["gap"]:
        t["gap_vs_base"] = r["gap"] / base["gap"] - 1
      if r["fvd"] is not None and base["fvd"]:
        t["fvd_vs_base"] = r["fvd"] / base["fvd"] - 1
    out.append(t)
  return out


def plot_series(curve: dict, key: str) -> list[dict]:
  """Series per method for ``plots.xy_plot``: x = log2(network passes per sample)."""
  series = []
  for method in sorted({r["method"] for r in curve["points"]}, key=_order):
    pts = sorted((r for r in curve["points"] if r["method"] == method and r["best_of"] == 1
                  and r.get(key) is not None and r["network_passes"]),
                 key=lambda r: r["network_passes"])
    if pts:
      series.append(dict(label=method, x=[np.log2(r["network_passes"]) for r in pts],
                         y=[r[key] for r in pts],
                         text=[f"{r['network_passes']:g}" for r in pts]))
  best = [r for r in curve["points"] if r["best_of"] > 1 and r.get(key) is not None]
  if best:
    series.append(dict(label="best-of-N", x=[np.log2(r["network_passes"]) for r in best],
                       y=[r[key] for r in best], line=False,
                       text=[f"{r['network_passes']:g}" for r in best]))
  return series


def _order(method: str) -> int:
  return METHODS.index(method) if method in METHODS else len(METHODS)


def retime(curve: dict, rounds: int = 3, log=print) -> dict:
  """Times every point's sampler again, all in this process and alternating over
  ``rounds`` (the machine is shared: only times measured side by side compare), and
  replaces the curve's seconds with the median of the rounds: seconds per video-second
  (x the candidates of a best-of point) and per usable second (/ its usable fraction)."""
  import jax  # pylint: disable=g-import-not-at-top
  from video_dit import conditions  # pylint: disable=g-import-not-at-top
  from video_dit.evaluation import cost as cost_lib  # pylint: disable=g-import-not-at-top
  from video_dit.models import registry  # pylint: disable=g-import-not-at-top
  setups = []
  for r in curve["points"]:
    restored = workdir_lib.load(r["workdir"])
    config = restored.config
    config.sample.update(r["sampler"])
    dit = registry.build_dit(config)
    one = evaluate.load_examples(config, "test", 2)
    cond = jax.tree.map(lambda x: x[:1], conditions.split_batch(one)[1])
    setups.append((r, restored.params, dit, cond, config))
  times = [[] for _ in setups]
  for k in range(rounds):
    for i, (r, params, dit, cond, config) in enumerate(setups):
      c = cost_lib.sampler_cost(dit.model, params, dit.diffusion, dit.sampler, cond,
                                (1,) + registry.video_shape(config),
                                float(config.sample.get("fps", 8.0)), repeats=3,
                                pixel_frames=config.data.frames)
      times[i].append(c["seconds_per_video_second"] * r["best_of"])
    log(f"round {k + 1}/{rounds} timed")
  for (r, *_), t in zip(setups, times):
    r["seconds_per_video_second"] = float(np.median(t))
    r["seconds_per_video_second_rounds"] = t
    r["seconds_per_usable_second"] = (r["seconds_per_video_second"] / r["usable_fraction"]
                                      if r["usable_fraction"] else None)
  curve["retimed"] = dict(rounds=rounds, note="median of alternating rounds in one process")
  with open(curve["path"], "w", encoding="utf-8") as f:
    json.dump(curve, f, indent=1)
  return curve
