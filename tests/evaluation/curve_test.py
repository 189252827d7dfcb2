"""The cost curve: its points, rows, ratios to the baseline, report section; --fast."""

import json
import os

import pytest

from tests import helpers
from video_dit import report, sampling
from video_dit.evaluation import curve


def _result(passes, gap, fvd, fraction, seconds, candidates=None):
  cost = dict(network_passes_per_sample=passes, seconds_per_video_second=seconds,
              tflops_per_video_second=passes * 1e-3)
  if candidates:
    cost["candidates_per_video"] = candidates
  usable = dict(fraction=fraction, fraction_ci95=[0.0, 1.0],
                seconds_per_usable_second=seconds / fraction if fraction else None)
  return dict(path="r.json", cost=cost, usable=usable, fvd=dict(fvd=fvd),
              identity=dict(generated=dict(gap=gap, gap_ci95=[gap - .01, gap + .01],
                                           choice_accuracy=0.7)),
              text=dict(accuracy=0.3))


def _curve():
  pts = curve.points("T", "G", "S", steps=(4, 32), cache_thresholds=(0.2,),
                     best_of=[("shortcut", 4, 2)])
  results = [_result(12, 0.08, 1800, 0.5, 0.04), _result(96, 0.10, 1700, 0.6, 0.30),
             _result(60, 0.09, 1750, 0.55, 0.2), _result(4, 0.06, 1900, 0.4, 0.02),
             _result(32, 0.09, 1720, 0.6, 0.11), _result(4, 0.1, 1800, 0.5, 0.01),
             _result(32, 0.1, 1800, 0.5, 0.08), _result(8, 0.1, 1800, 0.7, 0.04, 2)]
  return dict(num_videos=8, points=[curve.row(p, r) for p, r in zip(pts, results)])


def test_points_cover_every_method_and_label_them():
  pts = curve.points("T", "G", "S", steps=(1, 2), cache_thresholds=(0.1,),
                     best_of=[("one_pass", 2, 4)])
  assert [p["method"] for p in pts] == ["plain", "plain", "cache", "one_pass", "one_pass",
                                        "shortcut", "shortcut", "one_pass"]
  assert pts[2]["sampler"] == dict(num_steps=32, cache_threshold=0.1)
  assert pts[-1]["best_of"] == 4 and pts[-1]["label"] == "one_pass 2 steps best of 4"
  with pytest.raises(ValueError, match="needs that method's workdir"):
    curve.points("T", best_of=[("shortcut", 4, 2)])


def test_rows_ratios_and_series():
  c = _curve()
  base = curve.baseline(c)
  assert base["label"] == "plain 32 steps" and base["network_passes"] == 96
  table = {r["label"]: r for r in curve.table(c)}
  assert table["shortcut 4 steps"]["cheaper"] == pytest.approx(0.5 / 0.02)
  assert table["shortcut 4 steps"]["gap_vs_base"] == pytest.approx(0.0)
  best = table["shortcut 4 steps best of 2"]
  assert best["network_passes"] == 8  # two candidates of 4 passes (usable.count_candidates)
  series = {s["label"]: s for s in curve.plot_series(c, "seconds_per_usable_second")}
  assert set(series) == {"plain", "cache", "one_pass", "shortcut", "best-of-N"}
  assert series["plain"]["x"] == [pytest.approx(3.5849625), pytest.approx(6.5849625)]


def test_report_draws_the_curve(tmp_path):
  html = report.curve_html(_curve(), str(tmp_path))
  for key in ("gap", "action_accuracy", "fvd", "seconds_per_usable_second"):
    assert os.path.getsize(tmp_path / f"curve_{key}.png") > 1000
  assert "Quality against cost" in html and "shortcut 4 steps best of 2" in html
  assert ">25.0<" in html  # the shortcut's 25x
  assert report.curve_html(None, str(tmp_path)) == ""


def test_check_names_a_missing_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no checkpoint"):
    curve.check(curve.points(str(tmp_path)))


def test_fast_sampler_per_kind_of_checkpoint():
  plain = helpers.runlocal_config()
  assert sampling.fast_sampler(plain) == sampling.FAST["plain"]
  plain.model.guidance_embed = True
  assert sampling.fast_sampler(plain) == sampling.FAST["one_pass"]
  plain.model.step_embed = True
  assert sampling.fast_sampler(plain) == sampling.FAST["shortcut"]


def test_sample_fast_uses_the_fast_setting_and_flags_override_it(tiny_run, tmp_path):
  requests = [dict(face=str(tiny_run / "face.png"), prompt="a person nods", seed=0)]
  run = str(tiny_run / "run")
  [w] = sampling.generate(run, requests, str(tmp_path / "a"), face_is_crop=True, fast=True)
  with open(w["files"][-1]) as f:
    assert json.load(f)["sampler"]["num_steps"] == sampling.FAST["plain"]["num_steps"]
  [w] = sampling.generate(run, requests, str(tmp_path / "b"), face_is_crop=True, fast=True,
                          sampler=dict(num_steps=2))
  assert w["sampler"]["num_steps"] == 2


def test_retime_measures_every_point_side_by_side(tiny_run, tmp_path):
  run = str(tiny_run / "run")
  pts = curve.points(run, steps=(1, 2), best_of=[("plain", 1, 2)])
  rows = [dict(curve.row(p, _result(3, 0.1, 100, 0.5, 9.0)), usable_fraction=0.5) for p in pts]
  c = curve.retime(dict(num_videos=2, points=rows, path=str(tmp_path / "c.json")), rounds=1,
                   log=lambda *_: None)
  one, two, best = c["points"]
  assert all(r["seconds_per_video_second"] != 9.0 for r in c["points"])
  assert best["best_of"] == 2 and len(best["seconds_per_video_second_rounds"]) == 1
  assert best["seconds_per_usable_second"] == pytest.approx(best["seconds_per_video_second"] / 0.5)
  assert two["seconds_per_usable_second"] == pytest.approx(two["seconds_per_video_second"] / 0.5)
  assert one["seconds_per_usable_second"] == pytest.approx(one["seconds_per_video_second"] / 0.5)
  assert json.load(open(tmp_path / "c.json"))["retimed"]["rounds"] == 1
