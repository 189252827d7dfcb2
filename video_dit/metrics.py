"""Metric writing (process 0 only): ``W/metrics.jsonl``, TensorBoard events, console.

TensorBoard event files are written with tensorboardX (no TensorFlow needed).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard; a no-op on processes > 0."""

  def __init__(self, workdir: str, after: int | None = None):
    """``after``: a resumed run's start step; rows of later steps are dropped first."""
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    if after is not None and os.path.exists(path):
      _drop_rows_after(path, after)
    self._jsonl = open(path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      print("tensorboardX is not installed: no TensorBoard events (pip install tensorboardX)",
            file=sys.stderr)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites ``path`` (atomically) without the rows of steps > ``step`` (and without a
  torn last line)."""
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if row.get("step", 0) <= step:
      keep.append(json.dumps(row) + "\n")
  if len(keep) != len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(tmp, path)


class Progress:
  """A one-line console progress bar with rate and ETA (process 0 only)."""

  def __init__(self, total: int, start: int = 0):
    self.total, self.start, self.t0 = total, start, time.time()
    self.enabled = jax.process_index() == 0
    self.tty = sys.stderr.isatty()

  def update(self, step: int, text: str = "", force: bool = False) -> None:
    if not self.enabled or not (self.tty or force):
      return
    done = step - self.start
    rate = done / max(time.time() - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else math.inf
    width = 24
    filled = int(width * step / max(self.total, 1))
    eta_s = "--:--" if math.isinf(eta) else f"{int(eta // 60):02d}:{int(eta % 60):02d}"
    line = (f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
            f"{rate:.2f} it/s ETA {eta_s} {text}")
    print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=sys.stderr,
          flush=True)

  def close(self) -> None:
    if self.enabled and self.tty:
      print(file=sys.stderr)
