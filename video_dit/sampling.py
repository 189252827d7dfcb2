"""Sampling videos from a model: one jitted function per (shape, sampler).

``make_sampler`` returns ``fn(params, cond, key) -> video`` that runs the whole
sampler loop (``lax.scan``) with dual guidance inside one jit, batch-sharded
over the mesh when called under ``jax.set_mesh``. ``generate`` samples from a
training workdir's checkpoint (EMA parameters by default) for face photos and
prompts, and writes mp4, gif, a PNG strip and a provenance json per sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from video_dit import conditions, long_video, provenance, video_io
from video_dit import metrics as metrics_lib
from video_dit import workdir as workdir_lib
from video_dit.data import faces
from video_dit.diffusion import Diffusion, SamplerConfig
from video_dit.models import dit, registry


def make_sampler(model, diffusion: Diffusion, sampler: SamplerConfig,
                 shape: tuple[int, ...],
                 on_model_call: Callable[[], None] | None = None,
                 cache_reference: bool = True, scales_as_args: bool = False,
                 return_stats: bool = False,
                 windows: tuple[int, int] | None = None) -> Callable:
  """Jitted ``(params, cond, key) -> (B, T, H, W, C)`` float32 video in model space.

  ``on_model_call`` (e.g. a progress bar's tick) runs on the host after every
  guided model call of the sampler loop. With in-context reference tokens
  (``identity.mode`` '...reference'), their keys/values are computed once per sample
  and reused by every step (``cache_reference=False`` recomputes them each call).
  ``scales_as_args``: ``(params, cond, key, text_scale, id_scale)``, the guidance
  scales traced (one program serves every scale; always 3 passes per guided call).
  ``return_stats``: ``(video, {'full_calls': ...})``, the guided model calls that ran in
  full (fewer than ``sampler.model_calls`` with the step cache, ``cache_threshold``).
  ``noise``: an optional last argument, the starting noise (default: drawn from the key).
  ``windows``: ``long_video.co_denoise``'s (window, stride[, taper,
  identity_after_first]) in model frames: ``shape`` is a video longer than the model's
  clip, denoised whole as overlapping windows of ``window`` frames every ``stride``
  whose predictions are averaged.
  """
  sampler.check(diffusion.config.objective)
  clip_shape = tuple(shape)
  if windows is not None:
    if sampler.cache_threshold > 0:
      raise ValueError("co-denoised windows (a long video) do not run the step cache; "
                       "set sample.cache_threshold=0")
    clip_shape = (shape[0], min(windows[0], shape[1])) + tuple(shape[2:])

  def sample(params, cond, key, text_scale=None, id_scale=None, noise=None):
    run_sampler = sampler
    if scales_as_args:
      run_sampler = dataclasses.replace(sampler, text_scale=text_scale, id_scale=id_scale)
    if cache_reference:  # reference tokens' keys/values: once per sample, not per step
      kv = dit.reference_kv(model, params, jnp.zeros(clip_shape, jnp.float32),
                            jnp.zeros(shape[:1], jnp.float32), cond)
      if kv is not None:
        cond = dict(cond, ref_kv=kv)

    def model_fn(x, t, c, **cache_mode):  # the step cache's modes, see VideoDiT
      out = model.apply(params, x, t, **c, **cache_mode)
      if on_model_call is not None and cache_mode.get("cache") != "indicator":
        jax.debug.callback(lambda _: on_model_call(), t[:1])  # every step, full or not
      return out
    if windows is not None:
      model_fn = long_video.co_denoise(model_fn, shape[1], *windows)
    return diffusion.sample(model_fn, shape, cond, key, run_sampler, noise=noise,
                            return_stats=return_stats)

  if scales_as_args:
    return jax.jit(sample)
  return jax.jit(lambda params, cond, key, noise=None: sample(params, cond, key, noise=noise))


# --fast: the cheapest setting each kind of checkpoint keeps its quality at (measured on
# the quickstart model, README "Cost per usable second").
FAST = dict(shortcut=dict(sampler="shortcut", num_steps=4),
            one_pass=dict(sampler="euler", num_steps=4),
            plain=dict(sampler="euler", num_steps=4))


def fast_sampler(config) -> dict:
  """``config.sample`` overrides of ``--fast`` for this checkpoint: a shortcut model's
  few steps, a guidance-distilled model's one pass in fewer Euler steps, else fewer
  Euler steps of the plain model."""
  cfg = registry.model_config(config)
  if cfg.step_embed:
    return dict(FAST["shortcut"])
  return dict(FAST["one_pass" if cfg.guidance_embed else "plain"])


def min_face_side(size: int) -> int:
  """The smallest face (crop side, or detected box side) worth upsampling to ``size``."""
  return max(16, size // 2)


def load_face(path: str, size: int, is_crop: bool = False) -> np.ndarray:
  """The reference face as a (size, size, 3) uint8 crop.

  A photo goes through face detection and a square crop around the largest face;
  ``is_crop`` takes the image as an already-cropped face (e.g. synthetic faces,
  which a photo face detector does not see). A face smaller than
  ``min_face_side(size)`` pixels, an unreadable image and one over PIL's
  decompression-bomb limit are errors that say so.
  """
  image = video_io.read_image(path, "the face image")
  least = min_face_side(size)
  if is_crop:
    h, w = image.shape[:2]
    if min(h, w) < least:
      raise ValueError(f"the face crop {path} is {w}x{h} px; this model needs at least "
                       f"{least} px per side (it sees {size}x{size}); use a larger crop")
    return faces.square_resize(image, size)
  boxes = faces.detect_faces(image)
  if not boxes:
    raise ValueError(f"no face found in {path}; use a photo with a clear frontal face, or "
                     "pass --face_is_crop if the image is already a face crop")
  if min(boxes[0][2:]) < least:
    raise ValueError(f"the face in {path} is {boxes[0][2]}x{boxes[0][3]} px; this model "
                     f"needs at least {least} px per side; use a closer or larger photo")
  return faces.crop_face(image, boxes[0], size)


def read_requests(path: str) -> list[dict]:
  """A batch file (JSON lines of {face, prompt, seed, name}), read whole: a malformed
  line is an error naming it, before anything is sampled."""
  requests = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        request = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {n}: not valid JSON ({e.msg})") from e
      if not isinstance(request, dict):
        raise ValueError(f"{path} line {n}: not a JSON object with face, prompt, seed, name")
      requests.append(request)
  return requests


def _check_requests(requests: list[dict]) -> list[tuple[int, str]]:
  """(seed, output name) per request; raises naming the first bad request."""
  out = []
  for i, r in enumerate(requests):
    if not str(r.get("prompt", "")).strip():
      raise ValueError(f"request {i}: the prompt is empty; describe the action to generate")
    if r.get("first_frame") and r.get("extend"):
      raise ValueError(f"request {i}: give a first frame or a video to extend, not both")
    if not (r.get("face") or r.get("first_frame") or r.get("extend")):
      raise ValueError(f"request {i}: no face image given (a face, a first frame or a video "
                       "to extend is needed)")
    seed = r.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, str)) or not str(seed).isdigit():
      raise ValueError(f"request {i}: seed {seed!r} is not a non-negative whole number")
    seed = int(seed)
    name = str(r.get("name") or f"sample_{i:03d}_seed{seed}")
    if name in (".", "..") or os.path.basename(name) != name or os.sep in name or "/" in name:
      raise ValueError(f"request {i}: name {name!r} must be a plain file name (no folders): "
                       "outputs are written inside --out")
    out.append((seed, name))
  return out


def config_hash(config) -> str:
  return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]


def sample_record(workdir: str, restored: workdir_lib.Restored, config_digest: str,
                  **fields) -> dict:
  """The provenance record of one sample from ``restored`` (``workdir``'s checkpoint):
  the checkpoint, its parameters' digest and how to check it, the config hash, the
  library versions, then ``fields`` (prompt, seed, face_sha256, face_consent, sampler...)."""
  step, ema = restored.step, restored.ema
  return provenance.record(
      checkpoint=os.path.basename(os.path.abspath(workdir)), step=step,
      params=("ema" if ema else "raw"), params_digest=restored.digest,
      params_digest_check=(f"python -m tools.inspect_checkpoint --workdir=<workdir> "
                           f"--step={step} --digest" + (" --ema" if ema else "")),
      config_hash=config_digest, **fields,
      versions={"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__})


def generate(workdir: str, requests: list[dict], out_dir: str, *, step: int | None = None,
             sampler: dict | None = None, num_frames: int = 0, ema: bool = True,
             face_is_crop: bool = False, overwrite: bool = False,
             consent: str | None = None, fast: bool = False, first_frame: str | None = None,
             extend: str | None = None, overlap: int = 0,
             windows: str = "sliding") -> list[dict]:
  """Samples one video per request ``{face, prompt, seed, name, consent}`` and writes,
  per sample, ``.mp4``, ``.gif``, ``.png`` (face + frames) and a provenance ``.json``,
  the provenance also embedded in the three media files (``video_dit.provenance``).

  A face photo (not ``face_is_crop``) needs the consent of the person shown:
  ``consent`` (or the request's own) is a statement recorded in the provenance.
  Every request, the sampler settings and the face images are checked before anything
  is sampled or written; existing outputs are an error unless ``overwrite``. ``fast``
  starts from ``fast_sampler``'s settings (``sampler`` still overrides them).

  Given frames (a frame-conditioned model, ``long_video``): ``first_frame`` (an image:
  image-to-video) or ``extend`` (a video, kept at the start of the output), also per
  request; the face is then optional. ``num_frames`` beyond the training length, or any
  given frames, sample sliding windows that are each given ``overlap`` frames (0 = half a
  clip) of the one before. ``windows='joint'``: ``num_frames`` beyond the training length
  as co-denoised windows overlapping by ``overlap`` frames (``long_video.co_denoise``),
  with any model.
  """
  requests = [dict(r, **{k: v for k, v in (("first_frame", first_frame), ("extend", extend))
                         if v and not r.get(k)}) for r in requests]
  seeds_names = _check_requests(requests)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise FileExistsError(f"--out={out_dir} is a file; give a folder for the samples")
  for i, r in enumerate(requests):
    statement = str(r.get("consent") or consent or "").strip()
    photo = (r.get("face") and not face_is_crop) or r.get("first_frame") or r.get("extend")
    if photo and not statement:
      raise ValueError(f"request {i}: a photo or video of a real person needs the consent of "
                       "the person shown: pass --consent='<who agreed, to what>' (e.g. 'I am "
                       "the person in this photo and agree to this video'); it is recorded in "
                       "the provenance of every output")
  for _, name in seeds_names:
    for ext in (".mp4", ".gif", ".png", ".json"):
      path = os.path.join(out_dir, name + ext)
      if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; choose another --out or name, or pass "
                              "--overwrite to replace it")
  restored = workdir_lib.load(workdir, step, ema)
  config, params, step = restored.config, restored.params, restored.step
  overrides = {k: v for k, v in (sampler or {}).items() if v is not None}
  if fast:
    overrides = {**fast_sampler(config), **overrides}
  config.sample.update(overrides)
  frames = long_video.Frames.of(config, requests, num_frames, overlap, windows)
  if num_frames and not frames.windowed:  # one clip of another length
    config.data.frames = num_frames
  codec = workdir_lib.codec(config)
  if num_frames and not frames.windowed and registry.latent_codec(config) == "vae":
    config.latent.shape = codec.latent_shape(registry.pixel_shape(config))
  built = registry.build_dit(config)
  sampler_cfg = built.sampler
  face_size = config.identity.face_size
  face_crops = [load_face(r["face"], face_size, face_is_crop) if r.get("face") else None
                for r in requests]
  given = [frames.given(r, codec) for r in requests]  # read (and checked) before sampling
  for r in requests:
    tokens = conditions.prompt_tokens(config, r["prompt"])
    if tokens > config.text.max_len:
      logging.warning("prompt %r: %d of its %d tokens are dropped (text.max_len=%d)",
                      r["prompt"], tokens - config.text.max_len, tokens, config.text.max_len)
  calls = sampler_cfg.model_calls * (1 if frames.joint else max(
      len(frames.plan(g, built.shape[0])) for g in given))
  bar = {"progress": None, "done": 0}

  def tick():
    bar["done"] += 1
    bar["progress"].update(min(bar["done"], calls), "sampler steps")

  shape, joint = (1,) + built.shape, None
  if frames.joint:  # the whole video at once, windows denoised together
    shape = (1, frames.total) + tuple(built.shape[1:])
    joint = (built.shape[0], built.shape[0] - frames.overlap)
  sample = make_sampler(built.model, built.diffusion, sampler_cfg, shape,
                        on_model_call=tick, return_stats=True, windows=joint)
  digest = config_hash(config)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for r, crop, ctx, (seed, name) in zip(requests, face_crops, given, seeds_names):
    cond = conditions.prompt_fields(config, [r["prompt"]])
    if crop is not None:
      cond["face"] = video_io.to_unit(crop[None])
    bar.update(progress=metrics_lib.Progress(calls), done=0)
    cached, extra = {}, {}
    if frames.windowed and not frames.joint:
      video = frames.sample(lambda c, k: sample(params, c, k)[0], cond, jax.random.key(seed),
                            ctx, built.shape)
      extra = frames.record(r, ctx, built.shape[0])
    else:
      video, stats = sample(params, cond, jax.random.key(seed))
      if sampler_cfg.cache_threshold:  # how many of the steps ran the blocks
        cached = dict(full_model_calls=int(stats["full_calls"]))
      if frames.joint:
        extra = frames.record(r, None, built.shape[0])
    if codec is not None:  # a latent-space DiT: decode with its VAE
      video = codec.decode(jax.device_get(video))
    video = video_io.to_uint8(video[0])
    bar["progress"].close()
    prefix = os.path.join(out_dir, name)
    fps = float(config.sample.get("fps", 8.0))  # checkpoints from before sample.fps
    face_sha = None
    if r.get("face"):
      with open(r["face"], "rb") as f:
        face_sha = hashlib.sha256(f.read()).hexdigest()
    else:  # no reference: the strip shows the first frame instead
      crop = faces.square_resize(video[0], face_size)
    record = sample_record(
        workdir, restored, digest, prompt=r["prompt"], seed=seed, face_sha256=face_sha,
        face_consent=str(r.get("consent") or consent or "").strip() or None,
        sampler=dataclasses.asdict(sampler_cfg), video_shape=list(video.shape), fps=fps,
        **cached, **extra)
    if jax.process_index() != 0:  # every process samples (the same video); one writes
      written.append(dict(record, files=[]))
      continue
    paths = video_io.write_sample(prefix, video, crop, fps, record)
    video_io.write_gif(prefix + ".gif", video, fps, provenance.gif_comment(record))
    with open(prefix + ".json", "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    written.append(dict(record, files=paths + [prefix + ".gif", prefix + ".json"]))
  return written
