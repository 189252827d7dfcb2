"""An HTML report of a run: samples beside their references and real clips, the loss
curve, the evaluation's metrics table, the per-frame identity curve and (when a guidance
sweep was run) the identity-vs-prompt trade-off.

``write_report(workdir)`` reads what training and evaluation left in the workdir
(``metrics.jsonl``, ``eval/step_N.json`` and its ``videos.npz``) and writes
``W/report.html`` with its images under ``W/report/``. Everything is drawn with
PIL (no plotting library) and written atomically.
"""

from __future__ import annotations

import html
import json
import os

import numpy as np
from PIL import Image

from video_dit import plots, video_io


def read_metrics(path: str, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of ``key`` from a metrics.jsonl (later lines win on a resumed run)."""
  points = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        row = json.loads(line)
        if key in row:
          points[int(row["step"])] = float(row[key])
  steps = np.asarray(sorted(points), np.int64)
  return steps, np.asarray([points[s] for s in steps], np.float64)


# ----------------------------------------------------------------------------- report


def _upscale(frames: np.ndarray, scale: int) -> np.ndarray:
  """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor."""
  return np.repeat(np.repeat(frames, scale, -2), scale, -3)


def _save_gif(video: np.ndarray, path: str, fps: float, scale: int) -> None:
  tmp = f"{path}.tmp{os.getpid()}.gif"
  video_io.write_gif(tmp, _upscale(video, scale), fps)
  os.replace(tmp, path)


def pick_examples(identities: np.ndarray, actions: np.ndarray, num: int,
                  per_identity: int = 3) -> list[int]:
  """Up to ``num`` example indices: ``per_identity`` distinct actions per identity,
  identities in order of first appearance."""
  chosen, seen = [], {}
  for i, (ident, act) in enumerate(zip(identities.tolist(), actions.tolist())):
    acts = seen.setdefault(ident, set())
    if len(acts) < per_identity and act not in acts:
      acts.add(act)
      chosen.append(i)
  order = {ident: k for k, ident in enumerate(dict.fromkeys(identities.tolist()))}
  chosen.sort(key=lambda i: (order[identities[i]], i))
  return chosen[:num]


def grid_video(videos: dict, picks: list[int], scale: int = 3, gap: int = 4) -> np.ndarray:
  """(T, H', W', 3) uint8: one row per pick of reference face | generated | real."""
  gen, real, faces = videos["generated"], videos["real"], videos["faces"]
  t, h, w, _ = gen.shape[1:]
  white = lambda *shape: np.full(shape + (3,), 255, np.uint8)
  rows = []
  for i in picks:
    face = np.asarray(Image.fromarray(faces[i]).resize((h, h), Image.BICUBIC))
    row = np.concatenate([np.repeat(face[None], t, 0), white(t, h, gap // scale or 1), gen[i],
                          white(t, h, gap // scale or 1), real[i]], axis=2)
    row = _upscale(row, scale)
    rows += [row, white(t, gap, row.shape[2])]
  return np.concatenate(rows[:-1], axis=1)


def _fmt(v, digits=3) -> str:
  if isinstance(v, float):
    return f"{v:.{digits}g}"
  return html.escape(str(v))


def metric_rows(results: dict) -> list[tuple[str, str, str]]:
  """(metric, value, context) rows of an evaluation result for the table."""
  rows = []
  ident = results.get("identity")
  if ident is not None:
    if "skipped" in ident:
      rows.append(("identity gap", "skipped", ident["skipped"]))
    else:
      g, r = ident["generated"], ident.get("real", {})
      if "gap" in g:
        lo, hi = g["gap_ci95"]
        verdict = "excludes 0" if lo > 0 or hi < 0 else "includes 0"
        coded = ("" if "gap" not in ident.get("codec", {}) else
                 f"; real clips through the codec: {ident['codec']['gap']:.3f}")
        rows.append(("identity gap (matched - mismatched reference)",
                     f"{g['gap']:.3f} [95% CI {lo:.3f}, {hi:.3f}]",
                     f"CI {verdict}; n={g['n']}; real clips: {r.get('gap', float('nan')):.3f}"
                     + coded))
        rows.append(("identity similarity matched / mismatched",
                     f"{g['matched']:.3f} / {g['mismatched']:.3f}",
                     f"real clips {r.get('matched', float('nan')):.3f} / "
                     f"{r.get('mismatched', float('nan')):.3f}"))
        rows.append(("two-alternative identity choice", f"{g['choice_accuracy']:.1%}",
                     f"chance 50%; real clips {r.get('choice_accuracy', float('nan')):.1%}"))
      else:
        rows.append(("identity gap", "skipped", g.get("skipped", "")))
  text = results.get("text")
  if text is not None:
    if "skipped" in text:
      rows.append(("action accuracy", "skipped", text["skipped"]))
    else:
      coded = ("" if "codec_accuracy" not in text else
               f", real clips through the codec {text['codec_accuracy']:.1%}")
      rows.append(("action accuracy (prompted action, probe)", f"{text['accuracy']:.1%}",
                   f"chance {text['chance']:.1%}, majority {text['majority_baseline']:.1%}, "
                   f"real clips {text['real_accuracy']:.1%}{coded}; n={text['n']}"))
  fvd = results.get("fvd")
  if fvd is not None:
    context = fvd.get("skipped", f"{fvd.get('num_generated')} generated vs "
                                 f"{fvd.get('num_real')} real clips of the same examples")
    if "halves" in fvd:
      h = fvd["halves"]
      context += (f"; the floor at {h['n']} vs {h['n']} clips (halves of the examples): real "
                  f"vs real {h['real_vs_real']:.0f}, generated vs real {h['generated_vs_real']:.0f}")
    rows.append(("FVD (I3D)", "skipped" if "skipped" in fvd else f"{fvd['fvd']:.1f}", context))
  cost = results.get("cost")
  if cost is not None and "skipped" not in cost:
    rows.append(("cost per generated video-second",
                 f"{cost['seconds_per_video_second']:.3g} s, "
                 f"{cost['tflops_per_video_second'] * 1e3:.3g} GFLOP",
                 f"{cost['model_calls_per_sample']} model calls per video, "
                 f"{cost['seconds_per_sample']:.3g} s per video" + (
                     f" ({cost['candidates_per_video']} candidates sampled per kept video)"
                     if "candidates_per_video" in cost else "")))
  rows += usable_rows(results)
  temp = results.get("temporal")
  if temp is not None and "skipped" not in temp:
    g, r, c = temp.get("generated", {}), temp.get("real", {}), temp.get("codec", {})
    rows.append(("frame change (mean |x_t - x_{t-1}|)",
                 _fmt(g.get("frame_change", float("nan"))),
                 f"real clips {_fmt(r.get('frame_change', float('nan')))}"))
    for axis, what in (("spatial", "between neighbouring pixels"),
                       ("temporal", "between frames")):
      if axis in g.get("seams", {}):
        rows.append((f"token-grid seams, {axis} (change across token borders / elsewhere, "
                     f"{what})", _fmt(g["seams"][axis]),
                     f"real clips {_fmt(r.get('seams', {}).get(axis, float('nan')))}" + (
                         f", through the codec {_fmt(c['seams'][axis])}"
                         if axis in c.get("seams", {}) else "")))
  return rows


def usable_rows(results: dict) -> list[tuple[str, str, str]]:
  """The usable fraction, the cost per usable video-second and best-of-N, as table rows."""
  rows = []
  use, best = results.get("usable"), results.get("best_of")
  if use is not None and "skipped" in use:
    rows.append(("usable samples", "skipped", use["skipped"]))
  elif use is not None:
    lo, hi = use["fraction_ci95"]
    action = ("" if use.get("action_fraction") is None else
              f", action alone {use['action_fraction']:.1%}")
    real = "" if "real_fraction" not in use else f"; real clips {use['real_fraction']:.1%}"
    rule = ("real clips vs another identity's reference, 5% false accepts" if "strict" in use
            else "5th percentile of real clips vs their own reference")
    rows.append(("usable samples", f"{use['fraction']:.1%} [95% CI {lo:.1%}, {hi:.1%}]",
                 f"{use['criterion']}; threshold {use['threshold']:.3f} ({rule}); identity "
                 f"alone {use['identity_fraction']:.1%}{action}{real}; n={use['n']}"))
    if "seconds_per_usable_second" in use:
      s, t = use["seconds_per_usable_second"], use["tflops_per_usable_second"]
      rows.append(("cost per usable video-second",
                   "unbounded" if s is None else f"{s:.3g} s, {t * 1e3:.3g} GFLOP",
                   use["cost_note"]))
  if best is not None:
    rows.append((f"best of {best['n']} by identity", "kept the most similar candidate",
                 f"selector: {best['selector']}; {best['bias']}"))
  return rows


def identity_plots(results: dict, sweep: dict | None, out_dir: str) -> str:
  """The per-frame identity curve and the guidance trade-off as PNGs; their HTML."""
  parts = []
  ident = results.get("identity") or {}
  gen, real = ident.get("generated", {}), ident.get("real", {})
  if "per_frame" in gen:
    series = []
    for label, d, key in (("generated, own ref", gen, "matched"),
                          ("generated, other ref", gen, "mismatched"),
                          ("real, own ref", real, "matched"),
                          ("real, other ref", real, "mismatched")):
      if "per_frame" not in d:
        continue
      y, half = np.asarray(d["per_frame"][key]), np.asarray(d["per_frame"][f"{key}_ci95"])
      series.append(dict(label=label, x=np.arange(len(y)), y=y, lo=y - half, hi=y + half))
    plots.xy_plot(series, os.path.join(out_dir, "identity_per_frame.png"),
                  "identity similarity per frame (mean, 95% CI)", "frame",
                  "cosine to reference")
    parts.append("<h2>Identity over the clip</h2><img src='report/identity_per_frame.png'>"
                 "<p class=small>Per frame, how close the video is to its own reference face "
                 "and to another identity's (the identity probe's embedding): a falling "
                 "curve is identity drift.</p>")
  per = ident.get("per_attribute")
  if per:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['accuracy']:.0%} [{v['ci95'][0]:.0%}, "
        f"{v['ci95'][1]:.0%}]</td><td>{v['chance']:.0%}</td><td>{v['real_accuracy']:.0%}</td>"
        f"<td>{'above chance' if v['ci95'][0] > v['chance'] else 'not above chance'}</td></tr>"
        for k, v in per.items())
    parts.append("<h2>Identity per attribute</h2><p class=small>How often the identity "
                 "probe reads the reference identity's true attribute value from a clip "
                 "(frames averaged), with a 95% CI.</p><table><tr><th>attribute</th>"
                 "<th>generated</th><th>chance</th><th>real clips</th><th>generated</th>"
                 f"</tr>{rows}</table>")
  if sweep and sweep.get("points"):
    pts = sweep["points"]
    series = []
    for fs in sorted({p["face_scale"] for p in pts}):
      row = sorted((p for p in pts if p["face_scale"] == fs), key=lambda p: p["text_scale"])
      series.append(dict(label=f"face scale {fs:g}", x=[p["action_accuracy"] for p in row],
                         y=[p["gap"] for p in row], lo=[p["gap_ci95"][0] for p in row],
                         hi=[p["gap_ci95"][1] for p in row],
                         text=[f"t{p['text_scale']:g}" for p in row]))
    plots.xy_plot(series, os.path.join(out_dir, "guidance_tradeoff.png"),
                  "identity vs prompt over guidance scales (t = text scale)",
                  "action accuracy", "identity gap")
    rows = "".join(f"<tr><td>{p['text_scale']:g}</td><td>{p['face_scale']:g}</td>"
                   f"<td>{p['gap']:.3f} [{p['gap_ci95'][0]:.3f}, {p['gap_ci95'][1]:.3f}]</td>"
                   f"<td>{p['choice_accuracy']:.1%}</td><td>{p['action_accuracy']:.1%} "
                   f"[{p['action_ci95'][0]:.1%}, {p['action_ci95'][1]:.1%}]</td></tr>"
                   for p in pts)
    parts.append(
        "<h2>Identity vs prompt</h2><img src='report/guidance_tradeoff.png'>"
        f"<p class=small>{sweep['num_videos']} held-out examples per point, same seed; "
        "95% CIs.</p><table><tr><th>text scale</th><th>face scale</th><th>identity gap</th>"
        f"<th>choice</th><th>action accuracy</th></tr>{rows}</table>")
  return "".join(parts)


_STYLE = """
body{font-family:sans-serif;margin:24px;max-width:1100px}
table{border-collapse:collapse;margin:12px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}
img.px{image-rendering:pixelated}
.small{color:#555;font-size:90%}
"""


def write_report(workdir: str, results: dict, *, num_samples: int = 12, scale: int = 4,
                 phases: dict | None = None, title: str = "video_dit report",
                 fps: float = 8.0, sweep: dict | None = None,
                 curve: dict | None = None) -> str:
  """Writes ``W/report.html`` (+ ``W/report/``) from an evaluation result; returns its path.
  ``curve``: a ``curve.cost_curve`` result, drawn as quality and cost against network
  passes per sample."""
  media = results["media"]
  with np.load(os.path.join(media, "videos.npz"), allow_pickle=False) as z:
    videos = {k: z[k] for k in z.files}
  out_dir = os.path.join(workdir, "report")
  os.makedirs(out_dir, exist_ok=True)

  steps, loss = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  plots.line_plot(steps, loss, os.path.join(out_dir, "loss.png"), "training loss")

  picks = pick_examples(videos["identity"], videos["action"], num_samples)
  sample_rows = []
  for k, i in enumerate(picks):
    names = dict(face=f"{k:02d}_face.png", gen=f"{k:02d}_generated.gif",
                 real=f"{k:02d}_real.gif")
    face = videos["faces"][i]
    h = videos["generated"].shape[2] * scale
    plots.save_image(Image.fromarray(face).resize((h, h), Image.BICUBIC),
                os.path.join(out_dir, names["face"]))
    _save_gif(videos["generated"][i], os.path.join(out_dir, names["gen"]), fps, scale)
    _save_gif(videos["real"][i], os.path.join(out_dir, names["real"]), fps, scale)
    sample_rows.append(
        f"<tr><td>{int(videos['identity'][i])}</td>"
        f"<td><img class=px src='report/{names['face']}'></td>"
        f"<td><img class=px src='report/{names['gen']}'></td>"
        f"<td><img class=px src='report/{names['real']}'></td>"
        f"<td>{html.escape(str(videos['caption'][i]))}</td></tr>")

  grid = picks[::max(1, len(picks) // 4)][:4]
  if grid:
    _save_gif(grid_video(videos, grid), os.path.join(out_dir, "grid.gif"), fps, 1)

  plots_html = (identity_plots(results, sweep, out_dir) + curve_html(curve, out_dir)
                + long_html(workdir))
  metric_html = "".join(f"<tr><td>{html.escape(a)}</td><td><b>{b}</b></td>"
                        f"<td class=small>{html.escape(c)}</td></tr>"
                        for a, b, c in metric_rows(results))
  phase_html = ""
  if phases:
    total = sum(phases.values())
    phase_html = ("<h2>Wall time</h2><table><tr><th>phase</th><th>seconds</th><th>share</th></tr>"
                  + "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.0f}</td>"
                            f"<td>{v / max(total, 1e-9):.0%}</td></tr>"
                            for k, v in phases.items())
                  + f"<tr><td><b>total</b></td><td><b>{total:.0f}</b></td><td></td></tr></table>")
  sampler = results.get("sampler", {})
  body = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class=small>Checkpoint step {results['step']} ({results.get('params', 'ema')} parameters) of
{html.escape(str(results.get('workdir', workdir)))}; {results['num_videos']} videos of the
'{html.escape(results.get('split', 'test'))}' split (identities never seen in training), sampler
{html.escape(str(sampler.get('name', '')))} with {sampler.get('num_steps', '')} steps, text scale
{sampler.get('text_scale', '')}, face scale {sampler.get('id_scale', '')}.</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>context</th></tr>{metric_html}</table>
{plots_html}
<p><img src='report/grid.gif'><br><span class=small>Reference face | generated video |
real clip of the same identity, for held-out identities.</span></p>
<h2>Samples</h2>
<p class=small>Each row: the held-out identity's reference face, the video generated from it and
the prompt, and a real clip of the same identity doing the prompted action.</p>
<table><tr><th>identity</th><th>reference</th><th>generated</th><th>real</th><th>prompt</th></tr>
{''.join(sample_rows)}</table>
<h2>Training loss</h2><img src='report/loss.png'>
{phase_html}
</body></html>
"""
  path = os.path.join(workdir, "report.html")
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(body)
  os.replace(tmp, path)
  return path


def write_long_report(workdir: str, results: dict) -> str:
  """``W/report_long.html``: a long-video evaluation's section as a page of its own."""
  from video_dit.evaluation import long_report  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "report_long.html")
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>video_dit: long videos"
            f"</title><style>{_STYLE}</style></head><body><h1>video_dit: step {results['step']}"
            f"</h1>{long_report.section(results, 'eval/' + results['name'])}</body></html>")
  os.replace(tmp, path)
  return path


def long_html(workdir: str) -> str:
  """The newest long-video evaluation's section (``evaluation/long.py``), if any."""
  import glob  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(workdir, "eval", "long*x_*.json")), key=os.path.getmtime)
  if not paths:
    return ""
  from video_dit.evaluation import long_report  # pylint: disable=g-import-not-at-top
  with open(paths[-1], encoding="utf-8") as f:
    results = json.load(f)
  return long_report.section(results, f"eval/{results['name']}")


def curve_html(curve: dict | None, out_dir: str) -> str:
  """The cost curve: four plots against log2(network passes per sample), and the table
  of every point beside the baseline (the plain sampler's most expensive point)."""
  if not curve or not curve.get("points"):
    return ""
  from video_dit.evaluation import curve as curve_lib  # pylint: disable=g-import-not-at-top
  imgs = []
  for key, name in (("gap", "identity gap"), ("action_accuracy", "action accuracy"),
                    ("fvd", "FVD"), ("seconds_per_usable_second", "s per usable video-s")):
    file = f"curve_{key}.png"
    plots.xy_plot(curve_lib.plot_series(curve, key), os.path.join(out_dir, file),
                  f"{name} vs network passes per sample", "log2(passes per sample)", name,
                  size=(520, 300))
    imgs.append(f"<img src='report/{file}'>")
  f = lambda v, spec: "n/a" if v is None else format(v, spec)
  rows = "".join(
      f"<tr><td>{html.escape(r['label'])}</td><td>{f(r['network_passes'], '.0f')}</td>"
      f"<td>{f(r['gap'], '.3f')}</td><td>{f(r['action_accuracy'], '.1%')}</td>"
      f"<td>{f(r['fvd'], '.0f')}</td><td>{f(r['usable_fraction'], '.1%')}</td>"
      f"<td>{f(r['seconds_per_usable_second'], '.3f')}</td>"
      f"<td>{f(r.get('cheaper'), '.1f')}</td></tr>" for r in curve_lib.table(curve))
  return ("<h2>Quality against cost</h2>" + "".join(imgs)
          + f"<p class=small>{curve['num_videos']} held-out examples per point, same seed; "
          "passes measured (step caching skips some); best-of-N counts every candidate. "
          "x cheaper: the baseline's seconds per usable video-second over the point's.</p>"
          "<table><tr><th>setting</th><th>passes</th><th>identity gap</th><th>action</th>"
          "<th>FVD</th><th>usable</th><th>s / usable s</th><th>x cheaper</th></tr>"
          f"{rows}</table>")
