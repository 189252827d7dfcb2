"""The causal video VAE: reconstruction + KL, and the latent statistics at the end."""

from __future__ import annotations

import os

import jax

from video_dit import latents, workdir
from video_dit.data import pipeline
from video_dit.models import autoencoder
from video_dit.tasks.base import Task


class VAETask(Task):
  """Reconstruct clips (L1 or L2) with a ``vae.kl_weight`` x KL term; at the end, the
  per-channel latent statistics of the EMA parameters go next to the checkpoints."""

  name = "vae"

  def __init__(self, config):
    super().__init__(config)
    v = config.vae
    self.objective = autoencoder.VAEObjective(self.model, v.recon, v.kl_weight)

  def loss(self, params, batch, keys, frozen=None):
    del frozen
    return self.objective.loss(params, batch["video"], keys)

  def finish(self, workdir_path: str, state) -> None:
    """Writes ``W/latent_stats.json`` for the final step (kept when already there)."""
    config, step = self.config, int(state.step)
    path = os.path.join(workdir_path, workdir.STATS_FILE)
    if os.path.exists(path) and workdir.read_stats(workdir_path)["step"] == step:
      return
    it = pipeline.make_iterator(config, "train", train=False)
    videos = (b["video"] for _, b in zip(range(config.vae.stats_batches), it))
    stats = latents.compute_stats(self.model, jax.device_get(state.ema_params), videos)
    if jax.process_index() == 0:
      workdir.write_stats(workdir_path, step, stats)
      print(f"latent statistics of step {step}: {path}", flush=True)
