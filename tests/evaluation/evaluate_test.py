import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from PIL import Image

from tests import helpers
from video_dit import report, train
from video_dit.data import builders, synthetic
from video_dit.diffusion import SamplerConfig
from video_dit.evaluation import denoise, evaluate, probes, sweep, temporal, usable


def test_paired_gap_and_interval():
  rng = np.random.default_rng(0)
  matched = 0.5 + 0.1 * rng.standard_normal(400)
  g = evaluate.paired_gap(matched, matched - 0.2)
  assert g["gap"] == pytest.approx(0.2) and g["choice_accuracy"] == 1.0
  assert g["gap_ci95"][0] == pytest.approx(0.2) and g["n"] == 400
  shuffled = rng.permutation(matched)
  noise = evaluate.paired_gap(matched, shuffled)
  lo, hi = noise["gap_ci95"]
  assert lo < 0 < hi and hi - lo == pytest.approx(
      2 * 1.96 * np.std(matched - shuffled, ddof=1) / 20)


def test_run_names_tell_sampler_settings_apart():
  base = SamplerConfig(num_steps=32, text_scale=4.0, id_scale=2.0)
  assert evaluate.run_name(3000, base, "test", 128) == "step_3000_test128_ema_euler32_text4_face2"
  cached = dataclasses.replace(base, cache_threshold=0.1)
  assert evaluate.run_name(3000, cached, "test", 128) == (
      "step_3000_test128_ema_euler32_text4_face2_cache0.1")


def test_mismatched_index_picks_another_identity():
  ids = np.array([3, 3, 5, 7, 7, 7])
  other = evaluate.mismatched_index(ids)
  assert np.all(ids[other] != ids)
  assert list(other) == [2, 2, 3, 0, 0, 0]
  with pytest.raises(ValueError, match="at least 2 identities"):
    evaluate.mismatched_index(np.array([1, 1]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("evaluate")
  data_dir = str(root / "data")
  config = helpers.runlocal_config(**{
      "data.data_dir": data_dir, "data.num_identities": 60, "data.clips_per_identity": 1,
      "sample.num_steps": 2})
  config.total_steps = 2
  builders.SyntheticFaces(data_dir=data_dir, spec=synthetic.spec_from_config(config)).prepare()
  train.train_and_evaluate(config, str(root / "run"), jax.devices()[:1])
  spec = probes.ProbeSpec.from_config(config)
  probes.train_probe("identity", spec, steps=150, log=None).save(str(root / "probes" / "identity"))
  probes.train_probe("action", spec, steps=30, batch=16, log=None).save(
      str(root / "probes" / "action"))
  return root


def test_evaluate_writes_every_metric(trained):
  run = str(trained / "run")
  r = evaluate.evaluate(run, num_videos=10, metrics=("identity", "text", "temporal", "cost"),
                        probe_dir=str(trained / "probes"), train_probes=False, num_gifs=2,
                        log=lambda *_: None)
  with open(r["path"]) as f:
    saved = json.load(f)
  assert r["path"] == os.path.join(run, "eval", "step_2_test10_ema_euler2_text4_face2.json")
  assert saved["num_videos"] == 10 and saved["split"] == "test" and saved["step"] == 2
  assert "fvd" not in saved  # not asked for
  ident = saved["identity"]
  assert ident["probe"]["roc_auc"] >= probes.MIN_AUC, ident
  # Real clips are the ceiling: their own reference wins almost always.
  assert ident["real"]["gap"] > 0.2 and ident["real"]["choice_accuracy"] >= 0.9
  # The saved numbers are the probes' readings of the saved videos: recompute them.
  with np.load(os.path.join(saved["media"], "videos.npz")) as f:
    gen, real, faces = f["generated"], f["real"], f["faces"]
    identity, action = f["identity"], f["action"]
  id_probe = probes.Probe.load(str(trained / "probes" / "identity"))
  ref = id_probe.embed_images(faces)
  clip = id_probe.embed_frames(gen).mean(1)
  clip /= np.linalg.norm(clip, axis=-1, keepdims=True)
  other = evaluate.mismatched_index(identity)
  want = evaluate.paired_gap(np.sum(clip * ref, -1), np.sum(clip * ref[other], -1))
  g = ident["generated"]
  assert g["n"] == 10 and g["gap"] == pytest.approx(want["gap"], abs=1e-6)
  assert g["matched"] == pytest.approx(want["matched"], abs=1e-6)
  assert g["choice_accuracy"] == want["choice_accuracy"]
  np.testing.assert_allclose(g["per_video_matched"], np.sum(clip * ref, -1), atol=1e-6)
  # Per attribute: the probe's reading of each clip against the identity's true value.
  truth = np.asarray([list(synthetic.identity_attributes(0, int(i)).values()) for i in identity])
  per = ident["per_attribute"]
  assert list(per) == list(synthetic.ATTRIBUTES)
  for a, name in enumerate(synthetic.ATTRIBUTES):
    for key, videos in (("accuracy", gen), ("real_accuracy", real)):
      assert per[name][key] == pytest.approx(
          np.mean(id_probe.clip_attributes(videos)[:, a] == truth[:, a]))
    assert per[name]["chance"] == pytest.approx(1 / synthetic.ATTRIBUTES[name])
  # Real clips show their identity's attributes (skin and hair colour: chance is 1/6).
  assert per["skin_tone"]["real_accuracy"] >= 0.5 and per["hair_color"]["real_accuracy"] >= 0.5
  text = saved["text"]
  assert text["chance"] == pytest.approx(1 / 11) and text["n"] == 10
  act_probe = probes.Probe.load(str(trained / "probes" / "action"))
  predicted = act_probe.action_logits(gen).argmax(-1)
  assert text["accuracy"] == pytest.approx(np.mean(predicted == action))
  assert text["predicted_counts"] == np.bincount(predicted, minlength=11).tolist()
  assert text["predicted"] == predicted.tolist()
  assert text["real_accuracy"] == pytest.approx(
      np.mean(act_probe.action_logits(real).argmax(-1) == action))
  assert text["real_accuracy"] > 0.5
  for name, videos in (("generated", gen), ("real", real)):
    t = saved["temporal"][name]
    frames = id_probe.embed_frames(videos)
    patch = tuple(helpers.runlocal_config().model.patch)  # pixels: the tubelet itself
    want = temporal.summary(videos, frames, patch)
    assert t.pop("seams") == pytest.approx(want.pop("seams")) and t == pytest.approx(want)
    assert t["embedding_variance"] > 0 and t["drift"] > 0
  # An untrained model's samples are noise, real clips are smooth.
  assert saved["temporal"]["generated"]["frame_change"] > saved["temporal"]["real"][
      "frame_change"]
  cost = saved["cost"]
  assert cost["model_calls_per_sample"] == 2 and cost["flops_per_sample"] > 0
  assert cost["video_seconds_per_sample"] == pytest.approx(8 / 8.0)
  assert cost["seconds_per_video_second"] == pytest.approx(cost["seconds_per_sample"])
  with np.load(os.path.join(saved["media"], "videos.npz")) as z:
    assert z["generated"].shape == z["real"].shape == (10, 8, 32, 32, 3)
    assert z["generated"].dtype == np.uint8 and len(z["caption"]) == 10
  assert os.path.isfile(os.path.join(saved["media"], "001.gif"))
  # Usable: identity over the verifier's threshold (the 95th percentile of the real clips'
  # similarity to another identity's reference) and the prompted action; the strict rule
  # (the real clips' 5th percentile of matched similarity) beside it.
  u = saved["usable"]
  real_matched = np.asarray(ident["real"]["per_video_matched"])
  real_wrong = np.asarray(ident["real"]["per_video_mismatched"])
  assert u["threshold"] == pytest.approx(np.percentile(real_wrong, 95))
  assert u["strict"]["threshold"] == pytest.approx(np.percentile(real_matched, 5))
  ok = (np.asarray(g["per_video_matched"]) >= u["threshold"]) & (predicted == action)
  assert u["per_video"] == ok.tolist() and u["fraction"] == pytest.approx(ok.mean())
  assert u["fraction_ci95"] == pytest.approx(usable.wilson_interval(ok.sum(), 10))
  if ok.any():
    assert u["seconds_per_usable_second"] == pytest.approx(
        cost["seconds_per_video_second"] / ok.mean())
  else:  # an untrained model: no usable sample, no finite cost
    assert u["seconds_per_usable_second"] is None and "no usable" in u["cost_note"]
  with open(os.path.join(run, "eval", "metrics.jsonl")) as f:
    row = json.loads(f.readlines()[-1])
  assert row["step"] == 2 and row["eval/identity/generated/gap"] == pytest.approx(g["gap"])
  assert row["eval/usable/fraction"] == pytest.approx(u["fraction"])
  assert os.listdir(os.path.join(run, "eval", "tensorboard"))
  assert r["identity"]["generated"]["gap"] == pytest.approx(g["gap"])


def test_best_of_two_keeps_the_selectors_pick_and_counts_both(trained, tmp_path):
  # The selector: an identity probe trained with another seed, beside the evaluation's
  # (short: selecting needs a probe; whether it verified is recorded, not required).
  probe_dir = tmp_path / "probes"
  shutil.copytree(trained / "probes", probe_dir)
  config = helpers.runlocal_config(**{
      "data.data_dir": str(trained / "data"), "data.num_identities": 60,
      "data.clips_per_identity": 1})
  probes.train_probe("identity", probes.ProbeSpec.from_config(config), steps=40,
                     seed=usable.SELECTOR_SEED, log=None).save(str(probe_dir / usable.SELECTOR))
  run = str(trained / "run")
  kw = dict(num_videos=6, probe_dir=str(probe_dir), train_probes=False, num_gifs=0,
            log=lambda *_: None)
  r = evaluate.evaluate(run, best_of=2, metrics=("identity", "text", "cost"), **kw)
  assert r["path"] == os.path.join(run, "eval", "step_2_test6_ema_euler2_text4_face2_best2.json")
  with open(r["path"]) as f:
    saved = json.load(f)
  b = saved["best_of"]
  assert b["n"] == 2 and "seed 1" in b["selector"] and b["selector_probe"]["seed"] == 1
  scores = np.asarray(b["selector_scores"])
  assert scores.shape == (2, 6) and b["chosen"] == np.argmax(scores, 0).tolist()
  # The kept videos are the selector's picks: its scores of them are the maxima.
  with np.load(os.path.join(saved["media"], "videos.npz")) as z:
    gen, faces = z["generated"], z["faces"]
  selector = probes.Probe.load(str(probe_dir / usable.SELECTOR))
  np.testing.assert_allclose(np.sum(selector.embed_clips(gen) * selector.embed_images(faces), -1),
                             scores.max(0), atol=1e-5)
  # Candidate 0 is the video best_of=1 samples; the other candidate is another video.
  one = evaluate.evaluate(run, metrics=(), **kw)
  assert "best" not in one["name"] and "best_of" not in one
  with np.load(os.path.join(one["media"], "videos.npz")) as z:
    first = z["generated"]
  for i, k in enumerate(b["chosen"]):
    assert np.array_equal(gen[i], first[i]) == (k == 0), (i, k)
  # The cost of a kept video is both candidates'.
  cost = saved["cost"]
  assert cost["candidates_per_video"] == 2 and cost["model_calls_per_sample"] == 4
  assert cost["seconds_per_video_second"] == pytest.approx(
      2 * cost["per_candidate"]["seconds_per_video_second"])
  u = saved["usable"]
  assert u["n"] == 6 and ("candidates" in u["cost_note"] or u["fraction"] == 0)


def test_per_frame_identity_is_the_clip_gap_resolved_over_frames():
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  refs = unit(rng.normal(size=(6, 5)))
  # Frames drift from the reference toward noise over 4 frames.
  frames = unit(np.stack([refs + k * 0.7 * rng.normal(size=refs.shape) for k in range(4)], 1))
  other = evaluate.mismatched_index(np.arange(6))
  pf = evaluate.per_frame_similarity(frames, refs, other)
  assert pf["matched"][0] == pytest.approx(1.0)
  assert pf["matched"][0] > pf["matched"][3] and len(pf["matched_ci95"]) == 4
  want = np.mean(np.sum(frames[:, 2] * refs[other], -1))
  assert pf["mismatched"][2] == pytest.approx(want)


def test_guidance_sweep_and_report_plots(trained, tmp_path):
  run = str(trained / "run")
  out = sweep.guidance_sweep(run, [1.0, 4.0], [2.0], num_videos=4, chunk=4,
                             probe_dir=str(trained / "probes"), log=lambda *_: None)
  assert [(p["text_scale"], p["face_scale"]) for p in out["points"]] == [(1, 2), (4, 2)]
  with open(out["path"]) as f:
    assert json.load(f)["points"] == json.loads(json.dumps(out["points"]))
  assert out["path"].endswith("guidance_step_2_test4_euler2.json")
  # Other sampler settings: every point is sampled with them, into another file.
  one = sweep.guidance_sweep(run, [4.0], [2.0], num_videos=5, chunk=5, sampler=dict(num_steps=1),
                             probe_dir=str(trained / "probes"), log=lambda *_: None)
  assert one["path"].endswith("guidance_step_2_test5_euler1.json")
  assert one["sampler"]["num_steps"] == 1 and one["sampler"]["name"] == "euler"
  # The quickstart reuses a sweep only if it was sampled with this noise scheme.
  assert evaluate.reusable(one) and not evaluate.reusable(dict(one, noise=None))
  assert os.path.exists(os.path.join(run, "eval", "step_2_test5_ema_euler1_text4_face2.json"))
  # Each point is an ordinary evaluation, kept under its own settings' name.
  for ts in (1, 4):
    with open(os.path.join(run, "eval", f"step_2_test4_ema_euler2_text{ts}_face2.json")) as f:
      r = json.load(f)
    p = out["points"][[1, 4].index(ts)]
    assert p["gap"] == r["identity"]["generated"]["gap"]
    assert p["action_accuracy"] == r["text"]["accuracy"]
  with pytest.raises(ValueError, match="finite and >= 0"):
    sweep.guidance_sweep(run, [float("nan")], [1.0])
  results = evaluate.evaluate(run, num_videos=4, metrics=("identity",), num_gifs=0,
                              probe_dir=str(trained / "probes"), log=lambda *_: None)
  path = report.write_report(str(tmp_path), results, num_samples=2, sweep=out)
  with open(path) as f:
    page = f.read()
  for png in ("identity_per_frame.png", "guidance_tradeoff.png"):
    assert f"report/{png}" in page
    img = np.asarray(Image.open(tmp_path / "report" / png).convert("RGB"))
    assert img.shape == (360, 640, 3) and len(np.unique(img.reshape(-1, 3), axis=0)) > 5


def test_same_seed_same_evaluation(trained, tmp_path):
  kw = dict(num_videos=10, metrics=("temporal",), log=lambda *_: None)
  run = str(trained / "run")
  a = evaluate.evaluate(run, **kw)["temporal"]
  b = evaluate.evaluate(run, **kw)["temporal"]
  assert a == b


def test_videos_do_not_depend_on_how_many_are_sampled_at_once(trained):
  # The quickstart samples 32 at a time, experiments.evaluate 8: one evaluation name, so
  # the same videos (each example's starting noise comes from its own index).
  kw = dict(num_videos=10, metrics=("temporal",), num_gifs=0, log=lambda *_: None)
  run = str(trained / "run")
  a = evaluate.evaluate(run, chunk=8, **kw)
  with np.load(os.path.join(run, "eval", a["name"], "videos.npz")) as f:
    first = f["generated"]
  b = evaluate.evaluate(run, chunk=16, **kw)
  with np.load(os.path.join(run, "eval", b["name"], "videos.npz")) as f:
    np.testing.assert_array_equal(f["generated"], first)
  assert a["temporal"] == b["temporal"]
  assert a["noise"] == "per_example"


def test_a_rerun_with_fewer_metrics_keeps_the_earlier_ones(trained, tmp_path):
  run = str(trained / "run")
  kw = dict(num_videos=7, probe_dir=str(trained / "probes"), train_probes=False,
            log=lambda *_: None)
  path = os.path.join(run, "eval", "step_2_test7_ema_euler2_text4_face2.json")
  if os.path.exists(path):  # this module's tests share one run: start from no evaluation
    os.remove(path)
  first = evaluate.evaluate(run, metrics=("temporal", "text", "cost"), **kw)
  assert first["path"] == path
  assert "usable" not in first  # no identity yet
  second = evaluate.evaluate(run, metrics=("denoise", "identity"), **kw)
  assert first["path"] == second["path"]
  with open(second["path"]) as f:
    saved = json.load(f)
  assert saved["temporal"] == first["temporal"] and saved["text"] == first["text"]
  curve = saved["denoise"]
  assert curve["t"] == list(denoise.LEVELS) and len(curve["ratio"]) == len(denoise.LEVELS)
  assert all(r > 0 for r in curve["ratio"]) and 0.3 < curve["data_std"] < 0.7
  # 'usable' is derived from the merged metrics: identity now, action and cost kept.
  u = saved["usable"]
  assert "skipped" not in u and u["action_fraction"] == pytest.approx(first["text"]["accuracy"])
  assert ("seconds_per_usable_second" in u) and u["n"] == 7
  # Other parameters (here: a changed digest on file) are another evaluation: nothing kept.
  saved["params_digest"] = "0" * 16
  with open(second["path"], "w") as f:
    json.dump(saved, f)
  third = evaluate.evaluate(run, metrics=("denoise",), **kw)
  with open(third["path"]) as f:
    assert "temporal" not in json.load(f)
  # Other probes score the same videos differently: nothing kept either.
  other = tmp_path / "other_probes"
  shutil.copytree(trained / "probes", other)
  fourth = evaluate.evaluate(run, metrics=("temporal",), **{**kw, "probe_dir": str(other)})
  with open(fourth["path"]) as f:
    saved = json.load(f)
  assert "denoise" not in saved
  # An evaluation from before the per-example noise sampled other videos: not merged.
  assert evaluate.reusable(saved)
  del saved["noise"]
  with open(fourth["path"], "w") as f:
    json.dump(saved, f)
  assert not evaluate.reusable(saved)
  fifth = evaluate.evaluate(run, metrics=("denoise",), **{**kw, "probe_dir": str(other)})
  with open(fifth["path"]) as f:
    assert "temporal" not in json.load(f)


def test_unverified_identity_probe_is_skipped_with_reason(trained):
  config = helpers.runlocal_config(**{
      "data.data_dir": str(trained / "data"), "data.num_identities": 60,
      "data.clips_per_identity": 1})
  probe = probes.Probe.load(str(trained / "probes" / "identity"))
  probe.scores["roc_auc"] = 0.8
  probe.save(str(trained / "weak" / "identity"))
  videos = np.zeros((2, 8, 32, 32, 3), np.uint8)
  out, embeds = evaluate.identity_metrics(
      config, videos, videos, videos[:, 0], np.array([48, 49]), str(trained / "weak" / "identity"),
      False, None)
  assert "0.800" in out["skipped"] and embeds is None and "generated" not in out
  # Usable is skipped with it, never computed from an unverified probe.
  assert "0.800" in usable.usable_block({"identity": out}, has_actions=True)["skipped"]


def test_bad_inputs(trained, tmp_path):
  with pytest.raises(ValueError, match="unknown metrics"):
    evaluate.evaluate(str(trained / "run"), metrics=("fid",))
  with pytest.raises(ValueError, match="best_of=0"):
    evaluate.evaluate(str(trained / "run"), best_of=0)
  with pytest.raises(FileNotFoundError, match="checkpoints"):
    evaluate.evaluate(str(tmp_path))


def test_evaluate_command_writes_the_json_and_logs_quietly(trained, tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run = str(trained / "run")
  cmd = [sys.executable, "-m", "experiments.evaluate", f"--workdir={run}", "--num_videos=4",
         "--metrics=temporal,cost", "--num_steps=1", f"--probe_dir={trained / 'probes'}"]
  r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  printed = json.loads(r.stdout[r.stdout.index("{"):])
  assert set(printed) == {"temporal", "cost"} and printed["cost"]["model_calls_per_sample"] == 1
  # The file name carries the sampler settings (test_run_names_tell_sampler_settings_apart).
  with open(os.path.join(run, "eval", "step_2_test4_ema_euler1_text4_face2.json")) as f:
    saved = json.load(f)
  assert saved["num_videos"] == 4 and saved["sampler"]["num_steps"] == 1
  assert saved["temporal"] == printed["temporal"]
  # Quiet by default: no library INFO lines (absl's 'I1130 12:00:00.0 ...' prefix).
  info = [line for line in r.stderr.splitlines() if re.match(r"I\d{4} ", line)]
  assert not info, info[:5]
  # --verbosity=1 brings them back.
  r = subprocess.run(cmd + ["--verbosity=1"], cwd=root, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0 and re.search(r"^I\d{4} ", r.stderr, re.M), r.stderr[-2000:]
