"""What ``evaluation/long.py`` shows: the curves over time, an image strip and GIFs of the
five variants, and the report section."""

from __future__ import annotations

import html
import os

import numpy as np
from PIL import Image

from video_dit import plots, video_io

CURVES = (("per_frame", "identity_similarity.png", "identity similarity to the reference"),
          ("per_frame_gap", "identity_gap.png", "identity gap (own - another's reference)"),
          ("frame_change", "frame_change.png", "mean |frame t+1 - frame t|"))


def draw(results: dict, videos: dict, faces, i2v, media: str, examples: int = 4,
         scale: int = 3) -> None:
  """PNG curves, ``strip.png`` (example 0: a row per variant, every second frame) and
  ``NNN.gif`` (face | the variants side by side) for the first examples."""
  fps = results["fps"]
  for key, file, title in CURVES:
    series = []
    for name, v in results["variants"].items():
      y = np.asarray(v[key])
      series.append(dict(label=name, x=np.arange(len(y)) / fps, y=y))
    plots.xy_plot(series, os.path.join(media, file), f"{title} over time", "seconds",
                  title.split(" (")[0], size=(640, 320))
  t, h, w = next(iter(videos.values())).shape[1:4]
  faces = np.stack([np.asarray(Image.fromarray(f).resize((h, h), Image.BICUBIC)) for f in faces])
  gap = np.full((h, 4, 3), 255, np.uint8)
  rows = [np.concatenate([faces[0], gap] + list(v[0][::2]), axis=1) for v in videos.values()]
  strip = np.concatenate([np.concatenate([r, np.full((2, r.shape[1], 3), 255, np.uint8)])
                          for r in rows])
  plots.save_image(Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2),
                                                 Image.NEAREST), os.path.join(media, "strip.png"))
  for i in range(min(examples, len(faces))):
    face = np.repeat(faces[i][None], t, axis=0)
    side = [face] + [np.concatenate([gap[None].repeat(t, 0), v[i]], axis=2)
                     for v in videos.values()]
    frames = np.concatenate(side, axis=2)
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    video_io.write_gif(os.path.join(media, f"{i:03d}.gif"), frames, fps)
  i2v_strip = np.concatenate([np.concatenate(list(v), axis=1) for v in i2v[:examples]])
  plots.save_image(Image.fromarray(i2v_strip).resize(
      (i2v_strip.shape[1] * 2, i2v_strip.shape[0] * 2), Image.NEAREST),
                   os.path.join(media, "image_to_video.png"))


def _fmt(v, spec=".3f") -> str:
  return "n/a" if v is None else format(v, spec)


def section(results: dict, rel: str) -> str:
  """The report's "Longer videos and image-to-video" section; ``rel``: the media folder
  relative to the page."""
  rows = []
  for name, v in results["variants"].items():
    for f, s in v["summary"].items():
      r = s["end_over_first"]
      rows.append(
          f"<tr><td>{html.escape(v['label'])}</td><td>{f}</td><td>{_fmt(s['first_window'])}</td>"
          f"<td>{_fmt(s['end_window'])}</td><td>{r['ratio']:.1%} [{r['ci95'][0]:.1%}, "
          f"{r['ci95'][1]:.1%}]</td><td>{_fmt(s['end_gap'])}</td>"
          f"<td>{s['slope_per_second']:+.4f}</td><td>{_fmt(s['seam_ratio'], '.2f')}</td>"
          f"<td>{_fmt(s.get('seam_ratio_tubelet'), '.2f')}</td></tr>")
  i2v = results["image_to_video"]
  imgs = "".join(f"<img src='{rel}/{file}'>" for _, file, _ in CURVES)
  gifs = "".join(f"<img class=px src='{rel}/{i:03d}.gif'>"
                 for i in range(min(4, results["num_videos"])))
  return f"""<h2>Longer videos and image-to-video</h2>
<p class=small>{results['num_videos']} held-out examples, videos of up to {results['factor']}x
the {results['clip_frames']}-frame training clip; windows given the last
{results['overlap_frames']} frames ((d): windows overlapping by as many frames, denoised
together). Similarity: the identity probe's cosine of each frame to
the reference face; end/first: the last clip-length window over the first (bootstrap 95% CI);
slope: similarity per generated second; seam: median frame change across window boundaries over the
median change inside windows (of all transitions; and of those from one tubelet to the next,
like for like).</p>{imgs}
<p>{gifs}<br><span class=small>Reference | (a) extends itself with identity | (b) identity off
after the first window | (c) independent clips | (d) co-denoised overlapping windows | (e) the
same, identity off after the first window.</span></p>
<table><tr><th>variant</th><th>length</th><th>first window</th><th>end window</th>
<th>end / first</th><th>end gap</th><th>slope /s</th><th>seam</th>
<th>seam vs tubelet steps</th></tr>{''.join(rows)}</table>
<p>Image-to-video (each example's first real frame given): first frame PSNR
{i2v['first_frame_psnr_db']:.1f} dB (min {i2v['first_frame_psnr_min_db']:.1f}); action read
{i2v['action_accuracy']:.1%} vs {i2v['text_to_video_action_accuracy']:.1%} in text-to-video
(difference 95% CI [{i2v['action_difference_ci95'][0]:+.1%},
{i2v['action_difference_ci95'][1]:+.1%}]).<br><img src='{rel}/image_to_video.png'></p>"""
