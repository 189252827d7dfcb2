"""PNG plots drawn with PIL (no plotting library), written atomically.

* ``line_plot``: one curve over steps (the training loss), raw and smoothed.
* ``xy_plot``: several labelled series of points with 95% error bars (the per-frame
  identity curve, the identity-vs-prompt guidance trade-off).
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw


def save_image(img: Image.Image, path: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}{os.path.splitext(path)[1]}"
  img.save(tmp)
  os.replace(tmp, path)



def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  span = max(hi - lo, 1e-12)
  step = 10 ** math.floor(math.log10(span / n))
  for m in (1, 2, 5, 10):
    if span / (m * step) <= n:
      step *= m
      break
  start = math.ceil(lo / step) * step
  return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
  """log10 positions of 1-2-5 values (or every digit on a short range) in [lo, hi]."""
  for mantissas in ((1, 2, 5), tuple(range(1, 10))):
    ticks = [math.log10(m) + k for k in range(math.floor(lo) - 1, math.ceil(hi) + 1)
             for m in mantissas if lo <= math.log10(m) + k <= hi]
    if len(ticks) >= 3:
      return ticks
  return nice_ticks(lo, hi)


def _canvas(size, title: str, margins):
  """A white image with the title and the plot box inside ``margins`` (l, r, t, b)."""
  left, right, top, bottom = margins
  img = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(img)
  draw.text((left, 3), title, fill="black")
  draw.rectangle([left, top, size[0] - right, size[1] - bottom], outline="black")
  return img, draw


def _axes(draw, size, margins, xrange, yrange, log_y: bool):
  """Ticks, tick labels and grid lines; returns the data -> pixel maps (px, py)."""
  (w, h), (left, right, top, bottom) = size, margins
  (x0, x1), (y0, y1) = xrange, yrange
  px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
  py = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)
  for t in nice_ticks(x0, x1):
    draw.line([px(t), h - bottom, px(t), h - bottom + 4], fill="black")
    draw.text((px(t) - 12, h - bottom + 6), f"{t:.3g}", fill="black")
  for t in (log_ticks(y0, y1) if log_y else nice_ticks(y0, y1)):
    draw.line([left - 4, py(t), left, py(t)], fill="black")
    draw.line([left + 1, py(t), w - right - 1, py(t)], fill=(230, 230, 230))
    draw.text((4, py(t) - 6), f"{10 ** t:.3g}" if log_y else f"{t:.3g}", fill="black")
  return px, py


def line_plot(xs, ys, path: str, title: str, xlabel: str = "step", ylabel: str = "loss",
              size: tuple[int, int] = (640, 360), log_y: bool = True) -> None:
  """A PNG line plot of ``ys`` over ``xs`` with axes, ticks and labels."""
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  keep = np.isfinite(ys) & ((ys > 0) if log_y else True)
  xs, ys = xs[keep], ys[keep]
  (w, h), (left, right, top, bottom) = size, (70, 20, 38, 45)
  img, draw = _canvas(size, title, (left, right, top, bottom))
  if len(xs) == 0:
    draw.text((left + 10, top + 10), "no data", fill="gray")
  else:
    f = np.log10 if log_y else (lambda v: v)
    fy = f(ys)
    x0, x1 = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1
    y0, y1 = float(fy.min()), float(fy.max())
    pad = 0.05 * max(y1 - y0, 1e-6)
    y0, y1 = y0 - pad, y1 + pad
    px, py = _axes(draw, size, (left, right, top, bottom), (x0, x1), (y0, y1), log_y)
    pts = [(px(x), py(y)) for x, y in zip(xs, fy)]
    draw.line(pts, fill=(170, 190, 230), width=1)
    if len(fy) >= 5:  # a smoothed curve over the raw one
      k = max(2, len(fy) // 20)
      smooth = np.convolve(fy, np.ones(k) / k, mode="valid")
      sx = xs[k - 1:]
      draw.line([(px(x), py(y)) for x, y in zip(sx, smooth)], fill=(20, 60, 160), width=2)
  draw.text((w // 2 - 15, h - 18), xlabel, fill="black")
  draw.text((4, top - 18), ylabel + (" (log)" if log_y else ""), fill="black")
  save_image(img, path)


COLOURS = ((20, 60, 160), (200, 60, 40), (40, 140, 60), (150, 80, 170), (230, 140, 20),
           (90, 90, 90))


def xy_plot(series: list[dict], path: str, title: str, xlabel: str, ylabel: str,
            size: tuple[int, int] = (640, 360)) -> None:
  """A PNG of labelled series: each ``dict(label, x, y, lo=None, hi=None, text=None,
  line=True)``; ``lo``/``hi`` draw error bars, ``text`` labels each point."""
  (w, h), (left, right, top, bottom) = size, (70, 150, 38, 45)
  img, draw = _canvas(size, title, (left, right, top, bottom))
  pts = [(np.asarray(s["x"], np.float64), np.asarray(s["y"], np.float64),
          np.asarray(s.get("lo") if s.get("lo") is not None else s["y"], np.float64),
          np.asarray(s.get("hi") if s.get("hi") is not None else s["y"], np.float64))
         for s in series]
  xs = np.concatenate([p[0] for p in pts]) if pts else np.zeros(0)
  ys = np.concatenate([np.concatenate(p[1:]) for p in pts]) if pts else np.zeros(0)
  ok = np.isfinite(ys)
  if not len(xs) or not ok.any():
    draw.text((left + 10, top + 10), "no data", fill="gray")
    save_image(img, path)
    return
  x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
  if x1 <= x0:
    x0, x1 = x0 - 0.5, x1 + 0.5
  y0, y1 = float(ys[ok].min()), float(ys[ok].max())
  pad = 0.05 * max(y1 - y0, 1e-6)
  y0, y1 = y0 - pad, y1 + pad
  xpad = 0.03 * (x1 - x0)
  x0, x1 = x0 - xpad, x1 + xpad
  px, py = _axes(draw, size, (left, right, top, bottom), (x0, x1), (y0, y1), False)
  for k, (s, (x, y, lo, hi)) in enumerate(zip(series, pts)):
    colour = COLOURS[k % len(COLOURS)]
    if s.get("line", True) and len(x) > 1:
      draw.line([(px(a), py(b)) for a, b in zip(x, y)], fill=colour, width=2)
    for i, (a, b, l, u) in enumerate(zip(x, y, lo, hi)):
      if l != u:
        draw.line([px(a), py(l), px(a), py(u)], fill=colour, width=1)
        draw.line([px(a) - 3, py(l), px(a) + 3, py(l)], fill=colour)
        draw.line([px(a) - 3, py(u), px(a) + 3, py(u)], fill=colour)
      draw.ellipse([px(a) - 3, py(b) - 3, px(a) + 3, py(b) + 3], fill=colour)
      if s.get("text") is not None:
        draw.text((px(a) + 5, py(b) - 12), str(s["text"][i]), fill=colour)
    ly = top + 4 + 16 * k
    draw.rectangle([w - right + 8, ly + 3, w - right + 18, ly + 11], fill=colour)
    draw.text((w - right + 22, ly), str(s["label"])[:20], fill="black")
  draw.text((left + (w - left - right) // 2 - 20, h - 18), xlabel, fill="black")
  draw.text((4, top - 18), ylabel, fill="black")
  save_image(img, path)

