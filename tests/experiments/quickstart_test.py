"""The quickstart end to end at a tiny budget: every phase, the report, and resuming."""

import html.parser
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests import helpers
from video_dit import plots, report
from video_dit.data import builders, synthetic
from video_dit.evaluation import probes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Sources(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.images, self.cells = [], []

  def handle_starttag(self, tag, attrs):
    if tag == "img":
      self.images.append(dict(attrs)["src"])

  def handle_data(self, data):
    self.cells.append(data.strip())


def _quickstart(workdir, data_dir, steps, sampler_steps=2):
  cmd = [sys.executable, "-m", "experiments.quickstart",
         f"--config=configs/synthetic_faces.py:runlocal,codec=pca,steps={steps}",
         "--config.model.head=overlap", "--config.model.head_margin=1",  # the presets' head
         "--config.diffusion.motion_weight=1",  # and their frame-change term
         f"--config.data.data_dir={data_dir}", "--config.data.num_identities=60",
         "--config.data.clips_per_identity=2", f"--config.sample.num_steps={sampler_steps}",
         f"--workdir={workdir}", "--num_videos=12", "--num_samples=4",
         "--metrics=identity,text,temporal,cost", "--sweep_text=1,4", "--sweep_face=2",
         "--sweep_videos=4"]
  t0 = time.time()
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
  wall = time.time() - t0
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  # Quiet by default: none of the libraries' INFO lines ('I1130 12:00:00.0 ...').
  info = [line for line in out.stderr.splitlines() if re.match(r"I\d{4} ", line)]
  assert not info, info[:5]
  return out.stdout + out.stderr, wall


def _phases(workdir):
  with open(os.path.join(workdir, "quickstart_phases.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_quickstart_end_to_end_and_resume(tmp_path):
  data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "run")
  config = helpers.runlocal_config(**{"data.data_dir": data_dir, "data.num_identities": 60,
                                      "data.clips_per_identity": 2})
  # Probes trained briefly where evaluation looks for them (the quickstart would
  # otherwise train them at full length on first use).
  builders.SyntheticFaces(data_dir=data_dir, spec=synthetic.spec_from_config(config)).prepare()
  spec = probes.ProbeSpec.from_config(config)
  probes.train_probe("identity", spec, steps=150, log=None).save(
      probes.default_path(data_dir, "identity", spec))
  probes.train_probe("action", spec, steps=30, batch=16, log=None).save(
      probes.default_path(data_dir, "action", spec))

  log, wall = _quickstart(workdir, data_dir, steps=4)
  for phase in ("1/5 dataset", "2/5 training", "3/5 sampling", "4/5 guidance sweep",
                "5/5 report"):
    assert phase in log, log
  # The quickstart's path: the DiT learns the latents of the linear codec, fitted once
  # with the data.
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["latent"]["codec"] == "pca" and saved["model"]["head"] == "overlap"
  assert [p for p in os.listdir(os.path.join(data_dir, "codecs")) if p.endswith(".npz")]
  phases = _phases(workdir)
  assert set(phases) == {"dataset", "train", "evaluate", "sweep", "report"}
  # Phase times are measured (compiled programs may come from the suite's shared
  # compilation cache, so no lower bound), and together they fit inside the command's
  # own wall time.
  assert phases["train"] > 0 and phases["evaluate"] > 0 and phases["report"] > 0
  assert sum(phases.values()) < wall

  with open(os.path.join(workdir, "report.html"), encoding="utf-8") as f:
    page = f.read()
  parser = _Sources()
  parser.feed(page)
  for png in ("loss", "identity_per_frame", "guidance_tradeoff"):
    assert f"report/{png}.png" in parser.images
  gifs = [s for s in parser.images if s.endswith(".gif")]
  assert len(gifs) == 2 * 4 + 1  # generated + real per sample, and the grid
  for src in parser.images:
    with Image.open(os.path.join(workdir, src)) as img:
      img.load()
      if src.endswith(".gif") and "grid" not in src:  # 8 frames at 8 fps; PIL merges repeated frames
        duration = 0            # and GIF delays are whole 1/100 s
        for k in range(img.n_frames):
          img.seek(k)
          duration += img.info["duration"]
        assert img.size == (32 * 4, 32 * 4) and abs(duration - 1000) <= 80, (src, duration)
  text = " ".join(parser.cells)
  for metric in ("identity gap", "action accuracy", "cost per generated video-second",
                 "usable samples", "cost per usable video-second"):
    assert metric in text, text
  with open(os.path.join(workdir, "eval", "step_4_test12_ema_euler2_text4_face2.json")) as f:
    results = json.load(f)
  with open(os.path.join(workdir, "eval", "guidance_step_4_test4_euler2.json")) as f:
    assert [(p["text_scale"], p["face_scale"]) for p in json.load(f)["points"]] == [(1, 2), (4, 2)]
  assert results["num_videos"] == 12 and results["step"] == 4
  # The latent model's ceiling: the real clips through the codec, read by the same probes.
  assert 0 <= results["text"]["codec_accuracy"] <= 1
  assert len(results["text"]["codec_predicted"]) == 12
  assert "gap" in results["identity"]["codec"] and "seams" in results["temporal"]["codec"]
  assert "real clips through the codec" in text, text
  steps, loss = report.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert list(steps) == [4] and np.isfinite(loss).all()  # runlocal logs every 5 steps + last

  # Re-running resumes: training goes on from step 4, the old evaluation stays.
  name = lambda step: os.path.join(workdir, "eval", f"step_{step}_test12_ema_euler2_text4_face2.json")
  mtime = os.path.getmtime(name(4))
  log, wall = _quickstart(workdir, data_dir, steps=6)
  assert "resumed from" in log and "steps 4..6" in log
  assert os.path.getmtime(name(4)) == mtime
  assert os.path.exists(name(6))
  resumed = _phases(workdir)  # the second run's times add to the first's
  assert resumed["train"] > phases["train"] and resumed["evaluate"] > phases["evaluate"]
  assert sum(resumed.values()) - sum(phases.values()) < wall
  log, _ = _quickstart(workdir, data_dir, steps=6)  # nothing left to do
  assert "already at step 6" in log and "evaluation of step 6 found" in log
  assert "guidance sweep of step 6 found" in log
  assert _phases(workdir)["train"] == resumed["train"]  # no training was timed
  # The given config's sampler decides, not the one saved with the checkpoint.
  log, _ = _quickstart(workdir, data_dir, steps=6, sampler_steps=1)
  assert "already at step 6" in log and "3/5 sampling" in log and "4/5 guidance sweep:" in log
  with open(os.path.join(workdir, "eval", "step_6_test12_ema_euler1_text4_face2.json")) as f:
    assert json.load(f)["sampler"]["num_steps"] == 1


def test_pick_examples_spreads_identities_and_actions():
  ids = np.array([0, 0, 0, 0, 1, 1, 1, 2])
  acts = np.array([3, 3, 4, 5, 1, 2, 1, 0])
  assert report.pick_examples(ids, acts, 10) == [0, 2, 3, 4, 5, 7]
  assert report.pick_examples(ids, acts, 10, per_identity=1) == [0, 4, 7]
  assert report.pick_examples(ids, acts, 2) == [0, 2]


def test_grid_video_rows():
  rng = np.random.default_rng(0)
  videos = dict(generated=rng.integers(0, 255, (3, 8, 32, 32, 3), dtype=np.uint8),
                real=rng.integers(0, 255, (3, 8, 32, 32, 3), dtype=np.uint8),
                faces=rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8))
  grid = report.grid_video(videos, [2, 0], scale=2, gap=4)
  assert grid.shape == (8, 2 * 64 + 4, (32 + 2 + 32 + 2 + 32) * 2, 3)
  # Row 1, generated column: example 2 upsampled 2x; row 2, real column: example 0.
  np.testing.assert_array_equal(grid[:, :64:2, 68:132:2], videos["generated"][2])
  np.testing.assert_array_equal(grid[:, 68::2, 136::2], videos["real"][0])


def test_loss_plot_and_metric_rows(tmp_path):
  path = str(tmp_path / "loss.png")
  plots.line_plot(np.arange(1, 101), np.exp(-np.arange(100) / 30.0) + 0.05, path, "loss")
  with Image.open(path) as img:
    pixels = np.asarray(img.convert("RGB"))
  assert pixels.shape == (360, 640, 3)
  assert (pixels[..., 2] > 100).any() and (pixels.min(-1) < 100).any()  # a curve and axes
  rows = report.metric_rows({
      "identity": {"generated": {"gap": 0.3, "gap_ci95": [0.2, 0.4], "matched": 0.8,
                                 "mismatched": 0.5, "choice_accuracy": 0.9, "n": 64},
                   "real": {"gap": 0.5, "matched": 0.9, "mismatched": 0.4,
                            "choice_accuracy": 1.0}},
      "text": {"skipped": "no action labels"}})
  assert rows[0][1] == "0.300 [95% CI 0.200, 0.400]" and "excludes 0" in rows[0][2]
  assert rows[-1] == ("action accuracy", "skipped", "no action labels")
  fvd = {"fvd": 1539.2, "num_real": 128, "num_generated": 128,
         "halves": {"n": 64, "real_vs_real": 312.4, "generated_vs_real": 1690.0}}
  (row,) = report.metric_rows({"fvd": fvd})
  assert row[1] == "1539.2" and "at 64 vs 64 clips" in row[2]
  assert "real vs real 312, generated vs real 1690" in row[2]


def test_metric_rows_usable_and_cost_per_usable_second():
  cost = {"seconds_per_video_second": 2.0, "tflops_per_video_second": 0.003,
          "model_calls_per_sample": 8, "seconds_per_sample": 2.0, "candidates_per_video": 2}
  usable = {"threshold": 0.8, "fraction": 0.25, "fraction_ci95": [0.1, 0.5], "n": 16,
            "identity_fraction": 0.5, "action_fraction": 0.4, "real_fraction": 0.9,
            "criterion": "identity >= threshold and the prompted action",
            "seconds_per_usable_second": 8.0, "tflops_per_usable_second": 0.012,
            "cost_note": "cost per generated video-second / usable fraction"}
  best = {"n": 2, "selector": "identity probe trained with seed 1", "bias": "partly shared"}
  rows = {r[0]: r for r in report.metric_rows(
      {"cost": cost, "usable": usable, "best_of": best})}
  assert rows["usable samples"][1] == "25.0% [95% CI 10.0%, 50.0%]"
  assert "5th percentile of real clips vs their own reference" in rows["usable samples"][2]
  verifier = {r[0]: r for r in report.metric_rows({"usable": dict(usable, strict={})})}
  assert "another identity's reference, 5% false accepts" in verifier["usable samples"][2]
  assert "0.800" in rows["usable samples"][2] and "action alone 40.0%" in rows[
      "usable samples"][2]
  assert rows["cost per usable video-second"][1] == "8 s, 12 GFLOP"
  assert "2 candidates" in rows["cost per generated video-second"][2]
  assert "seed 1" in rows["best of 2 by identity"][2]
  none = dict(usable, fraction=0.0, seconds_per_usable_second=None,
              tflops_per_usable_second=None, cost_note="no usable sample")
  row = {r[0]: r for r in report.metric_rows({"usable": none})}["cost per usable video-second"]
  assert row[1] == "unbounded" and row[2] == "no usable sample"
  skipped = report.metric_rows({"usable": {"skipped": "identity probe AUC 0.8"}})
  assert skipped == [("usable samples", "skipped", "identity probe AUC 0.8")]


def test_an_interrupted_training_ends_the_quickstart_without_evaluating(tmp_path, monkeypatch,
                                                                        capsys):
  """Ctrl-C / SIGTERM make training save and return early; the quickstart then stops
  (a re-run resumes) instead of evaluating and reporting the unfinished checkpoint."""
  from video_dit import quickstart, train  # pylint: disable=g-import-not-at-top
  from video_dit import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from video_dit.data import pipeline  # pylint: disable=g-import-not-at-top
  from video_dit.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  config = helpers.runlocal_config(**{"data.data_dir": str(tmp_path / "data")})
  config.total_steps = 40
  saved = {"step": 10}
  monkeypatch.setattr(pipeline, "ensure_dataset", lambda c: None)
  monkeypatch.setattr(workdir_lib, "latest_step", lambda w: saved["step"])
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda c, w: saved.update(step=25))  # interrupted at step 25

  def never(*a, **k):
    raise AssertionError("evaluated an unfinished run")
  monkeypatch.setattr(evaluate, "evaluate", never)
  workdir = tmp_path / "run"
  assert quickstart.run(config, str(workdir), sweep=None) is None
  out = capsys.readouterr().out
  assert "training stopped at step 25 of 40" in out and "re-run" in out, out
  assert not (workdir / "report.html").exists()
  with open(workdir / "quickstart_phases.json") as f:
    assert set(json.load(f)) == {"dataset", "train"}  # the time it trained is kept
