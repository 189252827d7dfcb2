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

import flax
import jax
import jax.numpy as jnp
import numpy as np

from video_dit import conditions, video_io
from video_dit import metrics as metrics_lib
from video_dit import workdir as workdir_lib
from video_dit.data import faces
from video_dit.diffusion import Diffusion, SamplerConfig
from video_dit.models import dit, registry


def make_sampler(model, diffusion: Diffusion, sampler: SamplerConfig,
                 shape: tuple[int, ...],
                 on_model_call: Callable[[], None] | None = None,
                 cache_reference: bool = True) -> Callable:
  """Jitted ``(params, cond, key) -> (B, T, H, W, C)`` float32 video in model space.

  ``on_model_call`` (e.g. a progress bar's tick) runs on the host after every
  guided model call of the sampler loop. With in-context reference tokens
  (``identity.mode`` '...reference'), their keys/values are computed once per sample
  and reused by every step (``cache_reference=False`` recomputes them each call).
  """
  sampler.check(diffusion.config.objective)

  def sample(params, cond, key):
    if cache_reference:  # reference tokens' keys/values: once per sample, not per step
      kv = dit.reference_kv(model, params, jnp.zeros(shape, jnp.float32),
                            jnp.zeros(shape[:1], jnp.float32), cond)
      if kv is not None:
        cond = dict(cond, ref_kv=kv)

    def model_fn(x, t, c):
      out = model.apply(params, x, t, **c)
      if on_model_call is not None:
        jax.debug.callback(lambda _: on_model_call(), t[:1])
      return out
    return diffusion.sample(model_fn, shape, cond, key, sampler)

  return jax.jit(sample)


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
  restored = workdir_lib.load(workdir, step, ema)
  config, params, step = restored.config, restored.params, restored.step
  overrides = {k: v for k, v in (sampler or {}).items() if v is not None}
  config.sample.update(overrides)
  if num_frames:
    config.data.frames = num_frames
  codec = workdir_lib.codec(config)
  if num_frames and codec is not None:
    config.latent.shape = codec.latent_shape(registry.pixel_shape(config))
  built = registry.build_dit(config)
  sampler_cfg = built.sampler
  face_size = config.identity.face_size
  face_crops = [load_face(r["face"], face_size, face_is_crop) for r in requests]
  calls = sampler_cfg.model_calls
  bar = {"progress": None, "done": 0}

  def tick():
    bar["done"] += 1
    bar["progress"].update(min(bar["done"], calls), "sampler steps")

  sample = make_sampler(built.model, built.diffusion, sampler_cfg, (1,) + built.shape,
                        on_model_call=tick)
  config_hash = hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:16]
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for i, (r, crop) in enumerate(zip(requests, face_crops)):
    seed = int(r.get("seed", 0))
    cond = {**conditions.prompt_fields(config, [r["prompt"]]),
            "face": video_io.to_unit(crop[None])}
    bar.update(progress=metrics_lib.Progress(calls), done=0)
    video = sample(params, cond, jax.random.key(seed))
    if codec is not None:  # a latent-space DiT: decode with its VAE
      video = codec.decode(jax.device_get(video))
    video = video_io.to_uint8(video[0])
    bar["progress"].close()
    name = r.get("name") or f"sample_{i:03d}_seed{seed}"
    prefix = os.path.join(out_dir, name)
    fps = float(config.sample.get("fps", 8.0))  # checkpoints from before sample.fps
    paths = video_io.write_sample(prefix, video, crop, fps)
    video_io.write_gif(prefix + ".gif", video, fps)
    with open(r["face"], "rb") as f:
      face_sha = hashlib.sha256(f.read()).hexdigest()
    provenance = dict(
        workdir=os.path.abspath(workdir), step=step, params=("ema" if ema else "raw"),
        params_digest=restored.digest, config_hash=config_hash, prompt=r["prompt"], seed=seed,
        face=os.path.abspath(r["face"]), face_sha256=face_sha,
        sampler=dataclasses.asdict(sampler_cfg), video_shape=list(video.shape), fps=fps,
        versions={"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__})
    with open(prefix + ".json", "w") as f:
      json.dump(provenance, f, indent=2)
    written.append(dict(provenance, files=paths + [prefix + ".gif", prefix + ".json"]))
  return written
