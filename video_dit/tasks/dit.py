"""The video DiT: the diffusion loss with condition dropout, and periodic samples."""

from __future__ import annotations

import os

import jax
import jax.experimental.multihost_utils

from video_dit import conditions, sampling, sharding, video_io, workdir
from video_dit.data import pipeline
from video_dit.diffusion import context as context_lib
from video_dit.models import flops as flops_lib
from video_dit.models import registry
from video_dit.tasks.base import Task


def condition_dropout(key, batch: int, config) -> tuple[jax.Array, jax.Array]:
  """(drop_text, drop_id) per example: both with p_both, else text or identity alone."""
  t = config.train
  u = jax.random.uniform(key, (batch,))
  both = u < t.both_drop
  text_only = (u >= t.both_drop) & (u < t.both_drop + t.text_drop)
  id_only = (u >= t.both_drop + t.text_drop) & (u < t.both_drop + t.text_drop + t.id_drop)
  return both | text_only, both | id_only


class DiTTask(Task):
  """Denoise videos (or VAE latents) given text and a reference face.

  ``latent.source='encode'`` encodes each pixel batch with the frozen codec (a VAE or
  the fitted PCA codec) on the host; ``'cache'`` reads stored latents; sampling and
  evaluation decode with the same codec.
  """

  name = "dit"

  def __init__(self, config):
    self.config = config
    dit = registry.build_dit(config)
    self.model, self.cfg, self.shape = dit.model, dit.cfg, dit.shape
    self.diffusion, self.sampler = dit.diffusion, dit.sampler
    self._codec = None
    if registry.latent_codec(config) == "vae":
      self._codec = workdir.codec(config)  # loads the VAE: its errors come before compiling
      want = self._codec.latent_shape(registry.pixel_shape(config))
      if tuple(want) != tuple(self.shape):
        raise ValueError(f"latent.shape={tuple(self.shape)} but the VAE in "
                         f"{self._codec.workdir} makes {tuple(want)} from "
                         f"{registry.pixel_shape(config)} frames; set latent.shape={tuple(want)}.")

  @property
  def codec(self):
    """The frozen codec (None in pixel space); a PCA codec loads on first use, after
    ``pipeline.ensure_dataset`` has fitted it."""
    if self._codec is None and registry.latent_source(self.config) != "pixels":
      self._codec = workdir.codec(self.config)
    return self._codec

  def prepare(self, batch, key):
    rate = self.config.train.get("context_rate", 0.0)
    if rate:
      key, k_context = jax.random.split(key)
    drop_text, drop_id = condition_dropout(key, batch["video"].shape[0], self.config)
    batch = dict(batch, drop_text=drop_text, drop_id=drop_id)
    if self._encode_in_step():  # the linear codec is a matmul: encode inside the step
      batch["video"] = self.codec.encode(batch["video"])
    if rate:  # frame conditioning: some examples get some of their frames given
      batch.update(context_lib.draw(k_context, batch["video"], self.cfg.patch[0], rate,
                                    self.config.train.context_noise))
    return batch

  def _encode_in_step(self) -> bool:
    return (registry.latent_source(self.config) == "encode"
            and registry.latent_codec(self.config) == "pca")

  def loss(self, params, batch, keys, frozen=None):
    del frozen
    x0, cond = conditions.split_batch(batch)
    model_fn = lambda x, t, c: self.model.apply(params, x, t, **c)
    return self.diffusion.loss(model_fn, x0, cond, keys)

  def host_batch(self, batch):
    if (registry.latent_source(self.config) == "encode"
        and not self._encode_in_step()):  # pixels -> VAE latents on the host
      return dict(batch, video=jax.device_get(self.codec.encode(batch["video"])))
    return batch

  def step_rates(self):
    c = self.config
    flops = 3 * c.data.batch_size * flops_lib.forward_flops(self.cfg, self.shape, c.text.max_len)
    return float(flops), float(c.data.batch_size * flops_lib.num_tokens(self.cfg, self.shape))

  def periodic(self, mesh, workdir_path):
    return PeriodicSampler(self, mesh, workdir_path) if self.config.sample.every_steps else None


class PeriodicSampler:
  """Every ``sample.every_steps``: EMA samples for held-out references and captions,
  written to ``W/samples/step_N/`` as mp4 + a PNG strip with the reference face."""

  def __init__(self, task: DiTTask, mesh, workdir_path: str):
    config = task.config
    self.every = config.sample.every_steps
    self.mesh, self.workdir, self.seed = mesh, workdir_path, config.seed
    test = config.copy_and_resolve_references()
    test.data.batch_size = config.sample.num_videos
    batch = next(pipeline.make_iterator(test, "test", train=False))
    _, cond = conditions.split_batch(batch)
    # Each process read its share of the examples; the global batch is their
    # concatenation in process order (``shard_batch``), and so are the faces.
    self.faces = video_io.to_uint8(jax.experimental.multihost_utils.process_allgather(
        batch["face"], tiled=True))
    self.cond = sharding.shard_batch(cond, mesh)
    self.sample = sampling.make_sampler(task.model, task.diffusion, task.sampler,
                                        (len(self.faces),) + task.shape)
    self.decode = task.codec.decode if task.codec is not None else None

  def due(self, step: int) -> bool:
    return step % self.every == 0

  def maybe_write(self, step: int, ema_params) -> None:
    if not self.due(step):
      return
    with jax.set_mesh(self.mesh):
      videos = sharding.to_host(self.sample(ema_params, self.cond, jax.random.key(self.seed)))
    if self.decode is not None:
      videos = self.decode(videos)
    videos = video_io.to_uint8(videos)
    if jax.process_index() == 0:
      for i, (video, face) in enumerate(zip(videos, self.faces)):
        video_io.write_sample(os.path.join(self.workdir, "samples", f"step_{step}", f"{i:02d}"),
                              video, face)
