"""Where a compiled step's time goes: an op-level profile grouped into categories.

``profile_compiled`` runs a compiled program under ``jax.profiler.trace``, reads the
trace back (``jax.profiler.ProfileData``), and charges every executed HLO instruction's
time to one category, found from the optimized HLO (opcode, the fusion's body, and the
name scope in its metadata):

  optimizer       ops under the train step's ``optimizer`` scope (clip, AdamW)
  ema             ops under the ``ema`` scope
  attention       the attention core (``attention_core`` scope: QK^T, softmax, PV)
  matmul          every other dot/convolution, fused or not (projections, MLP, embeddings)
  norm/modulate   layer norms and adaLN modulation (``norm``/``modulate`` scopes)
  transpose/copy  layout changes: transposes, copies, concatenations, pads
  other           the remaining elementwise work (GELU, residuals, loss, RNG)

On CPU the events are XLA's per-thunk trace events (one per executed instruction); on
GPU the device plane's ``XLA Ops`` line (cuBLAS/cuDNN custom calls are read by their
target). A loop's own event (``while``) spans its body's events and is skipped. Times
are summed over threads, divided by the profiled steps. ``data transfer`` (host batch to device) is measured outside the
program by ``transfer_seconds``.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import tempfile
import time

import jax
import numpy as np

CATEGORIES = ("matmul", "attention", "norm/modulate", "transpose/copy", "other",
              "optimizer", "ema")
# Runtime and thread-pool events, not ops; "Wait: pending_threads=..." is a thread
# waiting for the ops of others (counting it would count their time twice).
_SKIP = re.compile(r"^(ThunkExecutor|ThreadpoolListener|SlinkyThreadPool|end: |Wait: |"
                   r"\$|PjitFunction|TfrtCpu|PjRt)")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+.*?\s([\w\-]+)\((.*)$")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


@dataclasses.dataclass
class Instr:
  opcode: str
  op_name: str
  calls: str | None
  target: str = ""  # a custom-call's target (GPU: cuBLAS / cuDNN kernels)


# Ops whose trace event spans other ops' events (a loop's whole body): counted by their
# body's ops, never themselves.
_CONTAINERS = ("while", "conditional", "call")
_MATMUL_TARGETS = re.compile(r"gemm|matmul|cublas|conv|dot", re.IGNORECASE)


def parse_hlo(text: str) -> tuple[dict[str, Instr], dict[str, set[str]]]:
  """Instructions by name, and the opcodes inside each computation."""
  instrs, bodies, current = {}, collections.defaultdict(set), None
  for line in text.splitlines():
    m = _INSTR.match(line)
    if m:
      name, opcode, rest = m.groups()
      op_name = re.search(r'op_name="([^"]*)"', rest)
      calls = re.search(r"calls=%?([\w.\-]+)", rest)
      target = re.search(r'custom_call_target="([^"]*)"', rest)
      instrs[name] = Instr(opcode, op_name.group(1) if op_name else "",
                           calls.group(1) if calls else None, target.group(1) if target else "")
      if current:
        bodies[current].add(opcode)
      continue
    c = _COMP.match(line)
    if c and "=" not in line.split("{")[0]:
      current = c.group(1)
  return instrs, bodies


def categorize(name: str, instrs: dict[str, Instr], bodies: dict[str, set[str]]) -> str:
  """The category of one executed instruction (see the module docstring)."""
  ins = instrs.get(name)
  if ins is None:
    base = re.sub(r"\.\d+$", "", name)
    return "matmul" if base in ("dot", "convolution") else "other"
  scope = ins.op_name
  if re.search(r"(^|/)optimizer(/|$)", scope):
    return "optimizer"
  if re.search(r"(^|/)ema(/|$)", scope):
    return "ema"
  if "attention_core" in scope:
    return "attention"
  ops = {ins.opcode} | (bodies.get(ins.calls, set()) if ins.calls else set())
  if ops & {"dot", "convolution"} or (ins.opcode == "custom-call"
                                      and _MATMUL_TARGETS.search(ins.target)):
    return "matmul"
  if re.search(r"/(norm\w*|modulate)/", scope):
    return "norm/modulate"
  if ins.opcode in ("transpose", "copy", "concatenate", "pad", "slice") or (
      ins.opcode == "fusion" and re.match(r"(transpose|copy|bitcast_concatenate|pad)", name)):
    return "transpose/copy"
  return "other"


def _events(xspace_path: str):
  """(instruction name, seconds) for every executed op in the trace."""
  data = jax.profiler.ProfileData.from_file(xspace_path)
  device_planes = [p for p in data.planes if p.name.startswith("/device:")]
  if device_planes:
    for plane in device_planes:
      for line in plane.lines:
        if line.name != "XLA Ops":
          continue
        for ev in line.events:
          stats = dict(ev.stats)
          yield str(stats.get("hlo_op", ev.name)), ev.duration_ns * 1e-9
    return
  for plane in data.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if line.name == "python":
        continue
      for ev in line.events:
        if ev.duration_ns > 0 and not _SKIP.match(ev.name):
          yield ev.name, ev.duration_ns * 1e-9


def profile_compiled(compiled, run_step, steps: int = 3) -> dict:
  """Runs ``run_step()`` (one call of ``compiled``) ``steps`` times under the profiler.

  Returns ``categories`` ({category: seconds per step}), ``top_ops`` (the 12 slowest
  instructions: name, category, seconds per step, scope), ``wall_s`` (per step) and
  ``op_s`` (the sum of op times per step; above ``wall_s`` where ops overlap on threads).
  """
  instrs, bodies = parse_hlo(compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    with jax.profiler.trace(d):
      for _ in range(steps):
        run_step()
    wall = (time.perf_counter() - t0) / steps
    paths = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    if not paths:
      raise RuntimeError("jax.profiler.trace wrote no .xplane.pb trace")
    per_op = collections.Counter()
    for name, sec in _events(max(paths, key=os.path.getmtime)):
      if name in instrs and instrs[name].opcode in _CONTAINERS:
        continue  # its body's ops are counted (the event would count them twice)
      per_op[name] += sec / steps
  cats = dict.fromkeys(CATEGORIES, 0.0)
  for name, sec in per_op.items():
    cats[categorize(name, instrs, bodies)] += sec
  top = [dict(op=n, category=categorize(n, instrs, bodies), seconds=s,
              scope=instrs[n].op_name if n in instrs else "")
         for n, s in per_op.most_common(12)]
  return dict(categories=cats, top_ops=top, wall_s=wall, op_s=float(sum(per_op.values())))


def transfer_seconds(host_batch: dict, sharding_fn, repeats: int = 3) -> float:
  """Median seconds to put one host batch on the devices (``sharding_fn(batch)``)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(sharding_fn(host_batch))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def table(profile: dict, transfer_s: float | None = None) -> str:
  """The categories as a markdown table: seconds per step and share of op time."""
  cats = dict(profile["categories"])
  if transfer_s is not None:
    cats["data transfer"] = transfer_s
  total = sum(cats.values()) or 1.0
  lines = ["| category | ms / step | share |", "|---|---|---|"]
  for name, sec in sorted(cats.items(), key=lambda kv: -kv[1]):
    lines.append(f"| {name} | {1000 * sec:.1f} | {100 * sec / total:.1f}% |")
  lines.append(f"| (step wall time) | {1000 * profile['wall_s']:.1f} | |")
  return "\n".join(lines)
