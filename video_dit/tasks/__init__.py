"""Training tasks: what is trained and on which objective. The trainer
(``video_dit.train``) runs any of them; ``config.task`` picks one.

  dit   the video diffusion transformer (``tasks/dit.py``)
  vae   the causal video autoencoder whose latents a DiT can learn (``tasks/vae.py``)
  guidance_distill, shortcut   one-pass guidance and few-step students of a trained
        DiT (``tasks/distill.py``)

A new task (few-step distillation, a LoRA fine-tune, ...) subclasses ``Task`` and adds
itself to ``TASKS``; the trainer's loop, checkpoints, EMA, resume and metrics come free.
A task that trains a new network also names it in ``models.registry.build_model``,
which is how a workdir's checkpoint is rebuilt for sampling (``workdir.load``).
"""

from __future__ import annotations

from video_dit.models import registry
from video_dit.tasks.base import Task
from video_dit.tasks.dit import DiTTask
from video_dit.tasks.distill import GuidanceDistillTask, ShortcutTask
from video_dit.tasks.vae import VAETask

TASKS: dict[str, type[Task]] = {"dit": DiTTask, "vae": VAETask,
                                "guidance_distill": GuidanceDistillTask,
                                "shortcut": ShortcutTask}


def for_config(config) -> Task:
  """The config's task, built and validated (every check before anything compiles)."""
  name = registry.task(config)
  if name not in TASKS:
    raise ValueError(f"task={name!r} is not one of {tuple(TASKS)}.")
  return TASKS[name](config)
