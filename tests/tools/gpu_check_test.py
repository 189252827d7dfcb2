"""tools.gpu_check: its --dry_run on the 8 fake CPU devices, and its refusals."""

import json
import math
import os
import subprocess
import sys

import pytest

from tools import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHASES = ("train", "sample", "memory_scaling")


def _positive(*values):
  return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


def test_dry_run_measures_every_phase_and_never_overwrites_unasked(tmp_path):
  out = tmp_path / "check.json"
  returned = gpu_check.run(str(out), dry_run=True)
  r = json.loads(out.read_text())
  assert r == returned and r["dry_run"] is True and r["complete"] is True
  assert _positive(r["wall_s"], r["device"]["peak_tflops_per_s"], r["device"]["device_count"])
  assert r["device"]["backend"] == "cpu" and r["device"]["jax_version"] and r["variant"] == "L"
  assert tuple(r["phases"]) == PHASES
  assert all(p["status"] == "ok" and _positive(p["seconds"]) for p in r["phases"].values())
  train = r["phases"]["train"]
  assert _positive(train["step_s"], train["mfu"], train["mem_per_device_bytes"],
                   train["tokens_per_s"], train["compile_s"])
  assert train["dtype"] == "float32" and train["attention"] == "einsum"
  sample = r["phases"]["sample"]
  assert _positive(sample["seconds_per_video_second"], sample["tflops_per_video_second"])
  points = r["phases"]["memory_scaling"]["points"]
  assert [p["frames"] for p in points] == [1, 2]
  for p in points:
    assert p["status"] == "ok" and p["error"] is None
    assert _positive(p["tokens"], p["mem_per_device_bytes"], p["step_s"])
  assert points[1]["tokens"] == 2 * points[0]["tokens"]
  assert points[1]["mem_per_device_bytes"] > points[0]["mem_per_device_bytes"]

  before = out.read_bytes()
  with pytest.raises(FileExistsError, match="--overwrite"):
    gpu_check.run(str(out), dry_run=True)
  assert out.read_bytes() == before
  # --overwrite with the time budget spent: every phase recorded as skipped.
  r = gpu_check.run(str(out), dry_run=True, overwrite=True, budget_s=0)
  assert json.loads(out.read_text()) == r and r["complete"] is True
  assert [p["status"] for p in r["phases"].values()] == ["skipped"] * 3
  assert os.listdir(tmp_path) == ["check.json"]  # no temporary file left behind


def test_cpu_without_dry_run_is_one_clear_error(tmp_path):
  out = tmp_path / "check.json"
  p = subprocess.run([sys.executable, "-m", "tools.gpu_check", f"--out={out}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 1, p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  errors = [line for line in p.stderr.splitlines() if "error:" in line]
  assert errors == [p.stderr.strip().splitlines()[-1]], p.stderr[-2000:]
  assert errors[0].startswith("error: no GPU found") and "--dry_run" in errors[0]
  assert not out.exists()
