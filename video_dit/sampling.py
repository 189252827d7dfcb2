"""Sampling videos from a model: one jitted function per (shape, sampler), and writers.

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

import flax
import jax
import ml_collections
import numpy as np
from PIL import Image

from video_dit import checkpoint, latents, video_io
from video_dit import metrics as metrics_lib
from video_dit.data import faces, text_store
from video_dit.diffusion import Diffusion, SamplerConfig
from video_dit.models import flops as flops_lib
from video_dit.models import registry
from video_dit.models.text import HashTokenizer


def make_sampler(model, diffusion: Diffusion, sampler: SamplerConfig,
                 shape: tuple[int, ...],
                 on_model_call: Callable[[], None] | None = None) -> Callable:
  """Jitted ``(params, cond, key) -> (B, T, H, W, C)`` float32 video in model space.

  ``on_model_call`` (e.g. a progress bar's tick) runs on the host after every
  guided model call of the sampler loop.
  """
  sampler.check(diffusion.config.objective)

  def sample(params, cond, key):
    def model_fn(x, t, c):
      out = model.apply(params, x, t, **c)
      if on_model_call is not None:
        jax.debug.callback(lambda _: on_model_call(), t[:1])
      return out
    return diffusion.sample(model_fn, shape, cond, key, sampler)

  return jax.jit(sample)


def to_uint8(x) -> np.ndarray:
  """[-1, 1] floats -> uint8 (clipped)."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def frame_grid(video_thwc: np.ndarray, face_hwc: np.ndarray | None = None) -> np.ndarray:
  """One row: the reference face (resized to the frame height), then every frame."""
  t, h, w, _ = video_thwc.shape
  parts = []
  if face_hwc is not None:
    parts.append(np.asarray(Image.fromarray(face_hwc).resize((h, h), Image.BICUBIC)))
    parts.append(np.full((h, max(2, w // 16), 3), 255, np.uint8))
  parts.extend(video_thwc)
  return np.concatenate(parts, axis=1)


def write_sample(prefix: str, video_thwc: np.ndarray, face_hwc: np.ndarray | None = None,
                 fps: float = 8.0) -> list[str]:
  """Writes ``prefix``.mp4 and ``prefix``.png (face + frames); returns the paths."""
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
  video_io.write_video(prefix + ".mp4", video_thwc, fps)
  Image.fromarray(frame_grid(video_thwc, face_hwc)).save(prefix + ".png")
  return [prefix + ".mp4", prefix + ".png"]


# ----------------------------------------------------------------------------- from a workdir


def write_gif(path: str, video_thwc: np.ndarray, fps: float = 8.0) -> None:
  frames = [Image.fromarray(f) for f in video_thwc]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps),
                 loop=0)


def load_checkpoint(workdir: str, step: int | None = None, ema: bool = True):
  """(config, model, params, step, params digest) of a training workdir's checkpoint."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir} has no checkpoints/ folder; train first with "
                            f"python -m experiments.train --workdir={workdir} ...")
  available = checkpoint.steps(directory)
  if not available:
    raise FileNotFoundError(f"no complete checkpoint in {directory}")
  if step is not None and step not in available:
    raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; it has {available}")
  step = available[-1] if step is None else step
  config = ml_collections.ConfigDict(checkpoint.restore_config(directory, step))
  model = (registry.build_vae if registry.task(config) == "vae" else registry.build)(config)[0]
  _, state = checkpoint.load_host(directory, step)
  params = state["ema_params" if ema else "params"]
  return config, model, params, step, checkpoint.digest(params)


def load_face(path: str, size: int, is_crop: bool = False) -> np.ndarray:
  """The reference face as a (size, size, 3) uint8 crop.

  A photo goes through face detection and a square crop around the largest face;
  ``is_crop`` takes the image as an already-cropped face (e.g. synthetic faces,
  which a photo face detector does not see).
  """
  try:
    with open(path, "rb") as f:
      image = video_io.decode_image(f.read())
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read the face image {path}: {e}") from e
  if is_crop:
    return faces.square_resize(image, size)
  boxes = faces.detect_faces(image)
  if not boxes:
    raise ValueError(f"no face found in {path}; use a photo with a clear frontal face, or "
                     "pass --face_is_crop if the image is already a face crop")
  return faces.crop_face(image, boxes[0], size)


def text_conditions(config, prompts: list[str]) -> dict[str, np.ndarray]:
  """Prompts -> the model's text arguments: hashed ids for the trainable encoder, or the
  frozen encoder's embeddings (rounded to float16 as the dataset stores them)."""
  if config.text.encoder == "precomputed":
    tokens, mask, pooled = text_store.encode(config.text.precomputed, prompts,
                                             config.text.max_len)
    return dict(text_emb_bld=tokens.astype(np.float16).astype(np.float32), text_mask_bl=mask,
                text_pooled_bd=pooled)
  return {"text_ids_bl": HashTokenizer(config.text.vocab_size, config.text.max_len)(prompts)}


def generate(workdir: str, requests: list[dict], out_dir: str, *, step: int | None = None,
             sampler: dict | None = None, num_frames: int = 0, ema: bool = True,
             face_is_crop: bool = False) -> list[dict]:
  """Samples one video per request ``{face, prompt, seed}`` and writes, per sample,
  ``.mp4``, ``.gif``, ``.png`` (face + frames) and a provenance ``.json``."""
  for i, r in enumerate(requests):
    if not str(r.get("prompt", "")).strip():
      raise ValueError(f"request {i}: the prompt is empty; describe the action to generate")
    if not r.get("face"):
      raise ValueError(f"request {i}: no face image given")
  config, model, params, step, digest = load_checkpoint(workdir, step, ema)
  overrides = {k: v for k, v in (sampler or {}).items() if v is not None}
  config.sample.update(overrides)
  if num_frames:
    config.data.frames = num_frames
  codec = latents.codec(config)
  if num_frames and codec is not None:
    config.latent.shape = codec.latent_shape(registry.pixel_shape(config))
  model, cfg = registry.build(config)
  diffusion = Diffusion.from_config(config.diffusion, flops_lib.num_tokens(
      cfg, registry.video_shape(config)))
  sampler_cfg = SamplerConfig.from_config(config.sample)
  face_size = config.identity.face_size
  face_crops = [load_face(r["face"], face_size, face_is_crop) for r in requests]
  calls = sampler_cfg.num_steps * (2 if sampler_cfg.name == "heun" else 1)
  bar = {"progress": None, "done": 0}

  def tick():
    bar["done"] += 1
    bar["progress"].update(min(bar["done"], calls), "sampler steps")

  sample = make_sampler(model, diffusion, sampler_cfg, (1,) + registry.video_shape(config),
                        on_model_call=tick)
  config_hash = hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for i, (r, crop) in enumerate(zip(requests, face_crops)):
    seed = int(r.get("seed", 0))
    cond = {**text_conditions(config, [r["prompt"]]),
            "face_bhwc": (crop[None].astype(np.float32) / 127.5 - 1.0)}
    bar.update(progress=metrics_lib.Progress(calls), done=0)
    video = sample(params, cond, jax.random.key(seed))
    if codec is not None:  # a latent-space DiT: decode with its VAE
      video = codec.decode(jax.device_get(video))
    video = to_uint8(video[0])
    bar["progress"].close()
    name = r.get("name") or f"sample_{i:03d}_seed{seed}"
    prefix = os.path.join(out_dir, name)
    fps = float(config.sample.get("fps", 8.0))  # checkpoints from before sample.fps
    paths = write_sample(prefix, video, crop, fps)
    write_gif(prefix + ".gif", video, fps)
    with open(r["face"], "rb") as f:
      face_sha = hashlib.sha256(f.read()).hexdigest()
    provenance = dict(
        workdir=os.path.abspath(workdir), step=step, params=("ema" if ema else "raw"),
        params_digest=digest, config_hash=config_hash, prompt=r["prompt"], seed=seed,
        face=os.path.abspath(r["face"]), face_sha256=face_sha,
        sampler=dataclasses.asdict(sampler_cfg), video_shape=list(video.shape), fps=fps,
        versions={"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__})
    with open(prefix + ".json", "w") as f:
      json.dump(provenance, f, indent=2)
    written.append(dict(provenance, files=paths + [prefix + ".gif", prefix + ".json"]))
  return written
