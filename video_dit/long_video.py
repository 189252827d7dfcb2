"""Longer videos, extension and image-to-video: a clip sampler run over sliding windows.

A frame-conditioned model (``train.context_rate`` > 0, ``diffusion/context.py``)
generates a clip of its training length with some of the first frames given. A long
video is a run of such windows::

    window 0: frames [0, W)                 nothing given (text-to-video), or the still /
                                            the video being extended
    window i: frames [s_i, s_i + W)         the first ``overlap`` frames are the last ones
                                            already made; the rest are new

so every frame is generated once and each window sees the end of the one before; the
reference face conditions every window (unless ``later_cond`` drops it). Frames here
are the model's (pixels, or latent frames of a codec), in whole tubelets.

``co_denoise`` is the other way, for any model (no frame conditioning needed): the
whole long video is denoised at once, as overlapping windows every ``stride`` frames
whose predictions are averaged on the frames they share at every sampler step
(Gen-L-Video's temporal co-denoising), so neighbouring windows agree on their shared
frames instead of one continuing the other (``sampling.make_sampler(windows=...)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from video_dit import video_io
from video_dit.diffusion import context as context_lib
from video_dit.models import registry


@dataclasses.dataclass(frozen=True)
class Window:
  start: int   # its first frame in the long video
  given: int   # how many of its first frames are already there (context)


def plan(total: int, window: int, overlap: int, known: int = 0, tubelet: int = 1,
         independent: bool = False) -> list[Window]:
  """The windows that make frames ``known`` .. ``total - 1`` once each.

  Each window after the first starts ``overlap`` frames before the first frame it
  makes (the last one ends at ``total``, so it may be given more); the first is given
  the last of the ``known`` frames there already are (``overlap`` of them, or more when
  the window must end at ``total``).
  ``independent``: back-to-back clips with nothing given (the baseline without frame
  conditioning); the last is cut at ``total``.
  """
  for name, value in (("frames", total), ("window", window), ("overlap", overlap),
                      ("known frames", known)):
    if value % tubelet:
      raise ValueError(f"{name}={value} must be a multiple of the model's tubelet depth "
                       f"{tubelet} (frames are given in whole tubelets).")
  if independent:
    return [Window(s, 0) for s in range(0, total, window)]
  if total < window:
    raise ValueError(f"a sliding-window video has at least one window: {total} frames < "
                     f"the window of {window}.")
  if not 0 < overlap < window:
    raise ValueError(f"overlap={overlap} must be between 1 and {window - 1} frames: each "
                     "window sees the last ones made and makes new ones.")
  if not 0 <= known < total:
    raise ValueError(f"{known} given frames leave nothing to make in {total} frames.")
  out, n = [], known
  while n < total:
    start = max(0, min(n - overlap, total - window)) if n else 0
    out.append(Window(start, n - start))
    n = start + window
  return out


def sample(sample_window: Callable, cond: dict, key, total: int, window_shape: tuple,
           overlap: int, tubelet: int, given=None, later_cond: dict | None = None,
           independent: bool = False, on_window: Callable | None = None,
           value_range: tuple[float, float] | None = None,
           context_noise: float = 0.0, noise: str = "fresh") -> np.ndarray:
  """A (B, total, H, W, C) float32 video in model space, window by window.

  Args:
    sample_window: ``(cond, key) -> (B, *window_shape)`` the jitted clip sampler
      (``sampling.make_sampler``); cond gains ``context`` and ``context_mask``.
    cond: the conditions of every window (text, face ...), batched (B, ...).
    window_shape: (W, H, W, C) of one clip.
    given: (B, n, H, W, C) the first frames (a still's tubelet, a video to extend).
    later_cond: the conditions of the windows after the first (default ``cond``; e.g.
      without the face: identity off once the first window is made).
    independent: clips back to back, nothing given, no context fields.
    on_window: called with (index, Window) after each window.
    value_range: new frames are clipped to it before later windows see them (pixels:
      (-1, 1), what the decoded video keeps anyway; out-of-range values fed back would
      compound window after window).
    context_noise: the given frames' noise level (``context_t``; training draws up to
      ``train.context_noise``): the model then trusts them a little less.
    noise: 'fresh' (each window draws its own starting noise) or 'reuse' (every window
      starts from the same noise at the same positions, after FreeNoise's noise
      rescheduling: the new frames start where the frames they follow started);
      ``sample_window`` then takes it as a third argument.
  Window 0 uses ``key`` (so with nothing given and fresh noise it is the plain clip of
  that seed); window i > 0 uses ``fold_in(key, i)``.
  """
  win = window_shape[0]
  b = given.shape[0] if given is not None else len(jax.tree.leaves(cond)[0])
  known = 0 if given is None else given.shape[1]
  video = np.zeros((b, max(total, known)) + tuple(window_shape[1:]), np.float32)
  if known:
    video[:, :known] = np.asarray(given, np.float32)
  windows = plan(total, win, overlap, known, tubelet, independent)
  if noise not in ("fresh", "reuse"):
    raise ValueError(f"noise={noise!r}: use 'fresh' or 'reuse'")
  start = None
  if noise == "reuse":
    start = np.asarray(jax.random.normal(jax.random.fold_in(key, 1 << 20),
                                         (b,) + tuple(window_shape), np.float32))
  for i, w in enumerate(windows):
    frames = np.zeros((b,) + tuple(window_shape), np.float32)
    have = min(w.start + win, video.shape[1]) - w.start
    frames[:, :have] = video[:, w.start:w.start + have]
    c = dict(cond if i == 0 or later_cond is None else later_cond)
    if not independent:  # (a model without frame conditioning runs the independent clips)
      c.update(context=frames, context_mask=context_lib.prefix_mask(b, win, w.given))
      if context_noise:
        c["context_t"] = np.full((b,), context_noise, np.float32)
    k = key if i == 0 else jax.random.fold_in(key, i)
    out = np.asarray(jax.device_get(sample_window(c, k) if start is None else
                                    sample_window(c, k, start)))
    end = min(w.start + win, total)
    if value_range is not None:
      out = np.clip(out, *value_range)
    video[:, w.start + w.given:end] = out[:, w.given:end - w.start]
    if on_window is not None:
      on_window(i, w)
  return video[:, :total]


def window_starts(total: int, window: int, stride: int) -> list[int]:
  """First frames of windows of ``window`` frames every ``stride`` frames over
  ``[0, total)``; the last one ends at ``total``."""
  if total <= window:
    return [0]
  return list(range(0, total - window, stride)) + [total - window]


def co_denoise(model_fn: Callable, total: int, window: int, stride: int,
               taper: bool = True, identity_after_first: bool = True) -> Callable:
  """``model_fn`` of a clip of ``window`` frames -> the same for a video of ``total``
  frames: the windows (``window_starts``) go through the model as one batch, with the
  conditions and timestep of their video, and each frame's prediction is the weighted
  mean of those of the windows that cover it. x0, noise and velocity predictions are
  all linear in the clean-video estimate, so the mean is a prediction of the same kind.

  ``taper``: a window's weight falls linearly towards its ends (i + 1/2 frames from
  the nearer end), so the mix cross-fades from one window to the next instead of
  switching where a window ends; else every window weighs 1 (a plain mean).
  ``identity_after_first=False``: the windows after the first see the model's null
  identity (``drop_id``), the ablation of identity conditioning beyond the first clip.
  """
  window = min(window, total)
  if not 0 < stride <= window:
    raise ValueError(f"co-denoised windows of {window} frames need a stride between 1 and "
                     f"{window} frames (got {stride}): every frame must be in a window")
  starts = window_starts(total, window, stride)
  weight = np.ones(window, np.float32)
  if taper:
    weight = np.minimum(np.arange(window), window - 1 - np.arange(window)) + 0.5
  count = np.zeros(total, np.float32)
  for s in starts:
    count[s:s + window] += weight

  def fn(x, t, c, **mode):
    if mode:
      raise ValueError("co-denoised windows do not run the step cache's modes")
    if isinstance(c, dict) and c.get("context_mask") is not None:
      raise ValueError("co-denoised windows make text-to-video; given frames take the "
                       "sliding windows (long_video.sample)")
    b, k = x.shape[0], len(starts)
    tile = lambda v: (jnp.concatenate([v] * k, 0)
                      if getattr(v, "ndim", 0) and v.shape[0] == b else v)
    c = jax.tree.map(tile, c)
    if not identity_after_first:
      later = jnp.arange(k * b) >= b  # every window but the first
      drop = c.get("drop_id")
      c = dict(c, drop_id=later if drop is None else jnp.logical_or(drop, later))
    out = model_fn(jnp.concatenate([x[:, s:s + window] for s in starts], 0), tile(t), c)
    acc = jnp.zeros((b, total) + out.shape[2:], out.dtype)
    w = jnp.asarray(weight).reshape((1, window) + (1,) * (out.ndim - 2))
    for i, s in enumerate(starts):
      acc = acc.at[:, s:s + window].add(w * out[i * b:(i + 1) * b])
    return acc / count.reshape((1, total) + (1,) * (out.ndim - 2))
  return fn


# ----------------------------------------------------------------------------- given frames


def fit_frame(image_hwc: np.ndarray, height: int, width: int) -> np.ndarray:
  """Centre crop to the clip's aspect, resized to (height, width, 3) uint8."""
  h, w = image_hwc.shape[:2]
  scale = min(h / height, w / width)
  ch, cw = round(height * scale), round(width * scale)
  top, left = (h - ch) // 2, (w - cw) // 2
  crop = Image.fromarray(np.ascontiguousarray(image_hwc[top:top + ch, left:left + cw]))
  return np.asarray(crop.resize((width, height), Image.BICUBIC))


def read_still(path: str) -> np.ndarray:
  """An image file as (H, W, 3) uint8; unreadable or oversized files are one error."""
  return video_io.read_image(path, "the first frame",
                             " (--first_frame takes an image: png, jpg ...)")


def read_clip(path: str, fps: float, max_side: int = 0) -> np.ndarray:
  """A video file (mp4, gif, anything ffmpeg reads) as (T, H, W, 3) uint8 at ``fps``
  (frames picked at the nearest source time: the model's motion per frame)."""
  try:
    frames, source_fps = video_io.read_video(path, max_side=max_side)
  except Exception as e:  # pylint: disable=broad-except  (PyAV raises its own errors)
    raise ValueError(f"cannot read the video to extend {path}: {e} (--extend takes a video "
                     "file: mp4, gif ...)") from e
  if abs(source_fps - fps) > 1e-3 * fps:
    count = max(1, int(np.floor(len(frames) * fps / source_fps + 1e-6)))
    frames = frames[np.minimum(np.round(np.arange(count) * source_fps / fps).astype(int),
                               len(frames) - 1)]
  return frames


def frame_units(config) -> tuple[int, int]:
  """(pixel frames per model frame, model frames per tubelet): given pixel frames come
  in multiples of their product."""
  pixel, model = registry.pixel_shape(config)[0], registry.video_shape(config)[0]
  return pixel // model, int(config.model.patch[0])


def still_frames(config, codec, stills_nhwc: np.ndarray) -> np.ndarray:
  """(N, n, H, W, C) model-space frames: each still (at the clip's frame size) held over
  one tubelet, the image-to-video start."""
  per_frame, tubelet = frame_units(config)
  x = video_io.to_unit(np.repeat(np.asarray(stills_nhwc)[:, None], per_frame * tubelet, 1))
  return np.asarray(codec.encode(x) if codec is not None else x, np.float32)


def given_frames(config, codec, still: np.ndarray | None = None,
                 clip: np.ndarray | None = None) -> np.ndarray:
  """(1, n, H, W, C) model-space frames from a still (``still_frames``) or a clip (its
  frames; leading frames beyond whole tubelets are dropped), at the model's frame size."""
  _, height, width, _ = registry.pixel_shape(config)
  if still is not None:
    return still_frames(config, codec, fit_frame(still, height, width)[None])
  per_frame, tubelet = frame_units(config)
  unit = per_frame * tubelet
  if len(clip) < unit:
    raise ValueError(f"the video to extend has {len(clip)} frames; it needs at least "
                     f"{unit} (one tubelet of the model)")
  pixels = np.stack([fit_frame(f, height, width) for f in clip[len(clip) % unit:]])
  x = video_io.to_unit(pixels)[None]
  return np.asarray(codec.encode(x) if codec is not None else x, np.float32)


def check_model(cfg, what: str) -> None:
  """Raises unless the model takes given frames."""
  if not cfg.frame_conditioning:
    raise ValueError(f"{what} needs a model trained with frame conditioning; this "
                     "checkpoint was not (train one with train.context_rate > 0, e.g. "
                     "configs/synthetic_faces.py:quickstart,frame_cond=0.5, "
                     "--config.ckpt.init_from=<this workdir> to start from it).")


@dataclasses.dataclass(frozen=True)
class Frames:
  """How ``sampling.generate`` makes its videos: one clip each (``windowed`` False), or
  sliding windows (given frames, or more frames than a clip). Lengths in model frames."""
  windowed: bool
  config: Any = None
  total: int = 0       # 0: the given frames plus one window's new frames (at least a clip)
  overlap: int = 0
  per_frame: int = 1   # pixel frames per model frame
  tubelet: int = 1
  value_range: tuple[float, float] | None = None  # pixels: (-1, 1)
  joint: bool = False  # co-denoised windows (``co_denoise``) instead of sliding ones

  @classmethod
  def of(cls, config, requests: list[dict], num_frames: int, overlap: int,
         windows: str = "sliding") -> "Frames":
    """Checks the request's frame settings against the model (before any sampling).
    ``windows``: 'sliding' (each window given the last frames made: a frame-conditioned
    model; other models make one longer clip) or 'joint' (co-denoised windows, any model,
    text-to-video of ``num_frames`` beyond the training length)."""
    cfg = registry.model_config(config)
    framed = any(r.get("first_frame") or r.get("extend") for r in requests)
    if windows not in ("sliding", "joint"):
      raise ValueError(f"--windows={windows}: use sliding or joint")
    joint = windows == "joint"
    if joint and framed:
      raise ValueError("--windows=joint makes text-to-video; given frames (--first_frame, "
                       "--extend) take the sliding windows")
    if joint and registry.latent_codec(config) == "vae":
      raise ValueError("--windows=joint needs a model whose frames map to a fixed number "
                       "of pixel frames (pixels, or latent.codec='pca'); a causal VAE's "
                       "first latent frame stands for one pixel frame and the others for "
                       "several, so its windows would not line up")
    if joint and num_frames <= config.data.frames:
      raise ValueError(f"--windows=joint is for --num_frames beyond the training length "
                       f"({config.data.frames}); got {num_frames}")
    if framed:
      check_model(cfg, "--first_frame / --extend")
    if not (framed or joint or (num_frames > config.data.frames and cfg.frame_conditioning)):
      if overlap:
        raise ValueError(f"--overlap={overlap} applies to sliding windows: given frames "
                         "(--first_frame, --extend) or --num_frames beyond the training "
                         f"length ({config.data.frames}) with a frame-conditioned model.")
      return cls(False)
    per_frame, tubelet = frame_units(config)
    unit, window = per_frame * tubelet, registry.video_shape(config)[0]
    for flag, value in (("--num_frames", num_frames), ("--overlap", overlap)):
      if value % unit or value < 0:
        raise ValueError(f"{flag}={value} must be a multiple of {unit} frames (the model "
                         "makes and is given whole tubelets).")
    overlap = overlap // per_frame or max(tubelet, window // 2 // tubelet * tubelet)
    plan(max(num_frames // per_frame, window), window, overlap, 0, tubelet)  # checks overlap
    pixels = registry.latent_source(config) == "pixels"
    return cls(True, config, num_frames // per_frame, overlap, per_frame, tubelet,
               (-1.0, 1.0) if pixels else None, joint)

  def given(self, request: dict, codec) -> np.ndarray | None:
    """The request's given frames in model space (None without)."""
    if request.get("first_frame"):
      return given_frames(self.config, codec, still=read_still(request["first_frame"]))
    if request.get("extend"):
      _, height, width, _ = registry.pixel_shape(self.config)
      clip = read_clip(request["extend"], float(self.config.sample.get("fps", 8.0)),
                       max_side=4 * max(height, width))
      return given_frames(self.config, codec, clip=clip)
    return None

  def frames(self, given, window: int) -> int:
    n = 0 if given is None else given.shape[1]
    if not self.total:
      return max(window, n + window - self.overlap)
    if n >= self.total:
      raise ValueError(f"--num_frames={self.total * self.per_frame} leaves nothing to make "
                       f"after the {n * self.per_frame} frames of the video to extend; ask "
                       "for more.")
    return self.total

  def plan(self, given, window: int) -> list[Window]:
    if not self.windowed:
      return [Window(0, 0)]
    if self.joint:
      return [Window(s, 0) for s in window_starts(self.total, window, window - self.overlap)]
    return plan(self.frames(given, window), window, self.overlap,
                0 if given is None else given.shape[1], self.tubelet)

  def sample(self, sample_window: Callable, cond: dict, key, given, window_shape) -> np.ndarray:
    return sample(sample_window, cond, key, self.frames(given, window_shape[0]), window_shape,
                  self.overlap, self.tubelet, given, value_range=self.value_range)

  def record(self, request: dict, given, window: int) -> dict:
    """The provenance of a windowed video: what was given and the windows."""
    out = dict(overlap_frames=self.overlap * self.per_frame,
               windows=len(self.plan(given, window)),
               window_mode="joint" if self.joint else "sliding")
    for key in ("first_frame", "extend"):
      if request.get(key):
        with open(request[key], "rb") as f:
          out[f"{key}_sha256"] = hashlib.sha256(f.read()).hexdigest()
        out["given_frames"] = int(given.shape[1] * self.per_frame)
    return out
