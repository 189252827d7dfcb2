"""The DiT's latent space: latent statistics, the latent cache, reconstruction PSNR.

A trained video VAE (``workdir.LatentCodec``) maps pixels to normalised latents.

* ``compute_stats``: per-channel shift/scale of the posterior means over training
  clips (VAE training writes them next to its checkpoints at the end).
* ``encode_dataset``: every record of a dataset, re-written once with the latents of
  its clip (first frames, centre crop) into an ArrayRecord cache that a DiT trains on
  with ``latent.source='cache'`` (``tools.encode_latents``).
* ``dataset_psnr`` / ``video_psnr``: how well the VAE reconstructs held-out clips and
  a video file (``tools.vae_psnr``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import numpy as np

from video_dit import video_io, workdir
from video_dit.data import builders, pipeline
from video_dit.models import autoencoder

CACHE_INFO_FILE = "latents.json"


def compute_stats(model, params, videos) -> dict:
  """Per-channel mean and std of the posterior means of an iterable of video batches."""
  encode = jax.jit(lambda p, x: model.apply(p, x, method=model.encode)[0])
  total, total_sq, count = 0.0, 0.0, 0
  for x in videos:
    z = np.asarray(encode(params, x), np.float64)
    flat = z.reshape(-1, z.shape[-1])
    total, total_sq, count = total + flat.sum(0), total_sq + (flat ** 2).sum(0), count + len(flat)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
  return dict(shift=mean.tolist(), scale=std.tolist(), num_latents=int(count))


def encode_dataset(vae_workdir: str, data_dir: str, out: str, frames: int = 0,
                   resolution: int = 0, batch: int = 16) -> dict:
  """Builds (or reuses) the latent cache of ``data_dir`` under ``out``; returns its
  description (also written to the cache's ``latents.json``).

  ``frames`` / ``resolution`` = 0 take the VAE's training clip size."""
  builders.find_dataset(data_dir)  # a missing source fails before anything is written
  codec = workdir.LatentCodec(vae_workdir)
  vc = codec.config
  frames = frames or vc.data.frames
  height, width = resolution or vc.data.height, resolution or vc.data.width
  shape = codec.latent_shape((frames, height, width, 3))  # raises when it does not fit

  def encode(records):
    clips = np.stack([pipeline.centre_clip(r, frames, height, width) for r in records])
    return np.asarray(jax.device_get(codec.encode(clips)))

  tag = f"{frames}f_{height}x{width}_vae{codec.step}_{codec.digest[:12]}"
  builder = builders.LatentCache(data_dir=out, source_dir=data_dir, encode=encode, tag=tag,
                                 batch=batch)
  existed = builder.is_prepared()
  report = builder.prepare()
  path = builder.data_path
  for store in glob.glob(os.path.join(builders.find_dataset(data_dir), "text_*.npz")):
    target = os.path.join(path, os.path.basename(store))
    if not os.path.exists(target):
      shutil.copyfile(store, target + ".tmp")
      os.replace(target + ".tmp", target)
  info = dict(vae_workdir=os.path.abspath(vae_workdir), vae_step=codec.step,
              vae_digest=codec.digest, source=os.path.abspath(data_dir), frames=frames,
              height=height, width=width, latent_shape=list(shape), path=str(path),
              records={k: v.num_examples for k, v in builder.info.splits.items()},
              reused=existed, skipped=len(report["skipped"]))
  tmp = os.path.join(path, CACHE_INFO_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(info, f, indent=2)
  os.replace(tmp, os.path.join(path, CACHE_INFO_FILE))
  return info


def reconstruct(codec: workdir.LatentCodec, video_bthwc: np.ndarray) -> np.ndarray:
  """Pixels -> posterior mean -> pixels."""
  return np.asarray(jax.device_get(codec.decode(codec.encode(video_bthwc))))


def dataset_psnr(codec: workdir.LatentCodec, data_dir: str, num_clips: int) -> dict:
  """PSNR of the first ``num_clips`` 'test' clips as the eval pipeline decodes them
  (first frames, centre crop) at the VAE's training size."""
  d = codec.config.data
  source = builders.data_source(data_dir, "test")
  n = min(num_clips, len(source))
  values = []
  for start in range(0, n, 8):
    clips = np.stack([pipeline.centre_clip(source[i], d.frames, d.height, d.width)
                      for i in range(start, min(start + 8, n))])
    values += np.asarray(autoencoder.psnr(reconstruct(codec, clips), clips)).tolist()
  return dict(what="dataset", data_dir=data_dir, clips=len(values), shape=list(clips.shape[1:]),
              psnr_db=float(np.mean(values)), psnr_db_min=float(np.min(values)))


def video_psnr(codec: workdir.LatentCodec, path: str, frames: int = 0) -> dict:
  """PSNR of a video file's first ``frames`` frames (0 = the VAE's training frames),
  cropped to a multiple of the spatial factor (the VAE is fully convolutional)."""
  frames = frames or codec.config.data.frames
  video, _ = video_io.read_video(path)
  s = codec.cfg.space_factor
  h, w = video.shape[1] // s * s, video.shape[2] // s * s
  clip = video_io.to_unit(video[None, :frames, :h, :w])
  codec.latent_shape(clip.shape[1:])  # raises when the frame count does not fit
  value = float(np.asarray(autoencoder.psnr(reconstruct(codec, clip), clip))[0])
  return dict(what="video", video=path, shape=list(clip.shape[1:]), psnr_db=value)
