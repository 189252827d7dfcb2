"""The whole pipeline in one call (``python -m experiments.quickstart``), resumable.

1. builds the synthetic dataset if it is missing;
2. trains the config (resuming from the workdir's checkpoints);
3. samples held-out identities with their prompts and evaluates them (identity gap with
   its 95% CI, action accuracy vs chance, FVD, cost);
4. sweeps text and identity guidance scales on fewer examples (the identity-vs-prompt
   trade-off);
5. writes ``W/report.html``: reference face, generated GIF, prompt and a real clip per
   sample, the loss curve, the metrics table, the per-frame identity curve and the
   trade-off plot.

A finished phase is not repeated: training continues from its last checkpoint and an
evaluation of the final step is reused. The wall time of each phase is kept in
``W/quickstart_phases.json``.
"""

from __future__ import annotations

import json
import os
import time

from video_dit import report, train
from video_dit import workdir as workdir_lib
from video_dit.data import pipeline
from video_dit.evaluation import evaluate, naming
from video_dit.evaluation import sweep as sweep_lib
from video_dit.models import registry


def _log(msg: str) -> None:
  print(f"[quickstart] {msg}", flush=True)


SWEEP = ((1.0, 4.0), (1.0, 2.0, 4.0), 24)  # text scales, face scales, videos per point


def run(config, workdir: str, num_videos: int = 128, num_samples: int = 12,
        metrics=evaluate.METRICS, sweep=SWEEP) -> str | None:
  """Runs (or resumes) every phase; returns the report's path (None when training was
  interrupted: its checkpoint is saved and a re-run resumes). ``sweep`` = (text
  scales, face scales, videos per point) of the guidance trade-off, or None to skip."""
  os.makedirs(workdir, exist_ok=True)
  phases_path = os.path.join(workdir, "quickstart_phases.json")
  phases = {}
  if os.path.exists(phases_path):
    with open(phases_path, encoding="utf-8") as f:
      phases = json.load(f)

  def timed(name, fn):
    t0 = time.time()
    out = fn()
    phases[name] = phases.get(name, 0.0) + (time.time() - t0)
    tmp = f"{phases_path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(phases, f, indent=1)
    os.replace(tmp, phases_path)
    return out

  if num_videos < 2:
    raise ValueError(f"--num_videos={num_videos} must be >= 2 (the identity gap pairs videos "
                     "of different identities)")
  if sweep:
    sweep_lib.check(*sweep)
  train.validate(config)  # every config error before any work
  _log(f"1/5 dataset: {config.data.data_dir}")
  timed("dataset", lambda: pipeline.ensure_dataset(config))

  done = workdir_lib.latest_step(workdir) or 0
  if done >= config.total_steps:
    _log(f"2/5 training: already at step {done} of {config.total_steps}")
  else:
    _log(f"2/5 training: steps {done}..{config.total_steps} "
         f"(batch {config.data.batch_size}, {config.model.width} wide, {config.model.depth} "
         "blocks); progress below, Ctrl-C saves and a re-run resumes")
    timed("train", lambda: train.train_and_evaluate(config, workdir))
  step = workdir_lib.latest_step(workdir)
  if (step or 0) < config.total_steps:  # Ctrl-C / SIGTERM: training saved and returned
    _log(f"training stopped at step {step or 0} of {config.total_steps} and its checkpoint is "
         "saved; re-run the same command to resume (nothing is evaluated before the last "
         "step)")
    return None

  # The config's sampler, also for a checkpoint trained when its default was another.
  sampler = config.sample.to_dict()
  eval_path = naming.result_path(workdir, config, step, num_videos)
  results = None
  if os.path.exists(eval_path):
    with open(eval_path, encoding="utf-8") as f:
      results = json.load(f)
    if (not evaluate.reusable(results) or results.get("num_videos") != num_videos or
        not os.path.exists(os.path.join(results.get("media", ""), "videos.npz"))):
      results = None
  # An evaluation that lacks some metrics (e.g. one added since) computes only those;
  # evaluate keeps the others.
  missing = [m for m in metrics if results is None or m not in results]
  if missing:
    _log(f"3/5 sampling {num_videos} held-out examples and evaluating step {step}: "
         f"{', '.join(missing)} (the identity and action probes train once, ~2 min, and are "
         "kept with the data)")
    results = timed("evaluate", lambda: evaluate.evaluate(
        workdir, step=step, num_videos=num_videos, metrics=tuple(missing),
        sampler=sampler, chunk=32, num_gifs=0, log=_log))
  else:
    _log(f"3/5 evaluation of step {step} found: {eval_path}")

  trade_off = None
  if sweep and {"identity", "text"} <= set(metrics):
    text_scales, face_scales, per_point = sweep
    sweep_file = sweep_lib.sweep_path(workdir, step, "test", per_point,
                                      registry.build_dit(config).sampler)
    if os.path.exists(sweep_file):
      with open(sweep_file, encoding="utf-8") as f:
        trade_off = json.load(f)
      if not evaluate.reusable(trade_off):  # sampled before the per-example noise
        trade_off = None
    if trade_off is not None:
      _log(f"4/5 guidance sweep of step {step} found: {sweep_file}")
    else:
      _log(f"4/5 guidance sweep: text scales {list(text_scales)} x face scales "
           f"{list(face_scales)}, {per_point} held-out examples each")
      trade_off = timed("sweep", lambda: sweep_lib.guidance_sweep(
          workdir, text_scales, face_scales, step=step, num_videos=per_point, chunk=per_point,
          sampler=sampler, log=_log))

  _log("5/5 report")
  path = timed("report", lambda: report.write_report(
      workdir, results, num_samples=num_samples, phases=dict(phases),
      fps=float(config.sample.fps), title=f"video_dit quickstart: step {step}",
      sweep=trade_off))
  for a, b, c in report.metric_rows(results):
    _log(f"  {a}: {b}  ({c})")
  _log("wall time per phase (s): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
  _log(f"report: {os.path.abspath(path)}")
  return path


