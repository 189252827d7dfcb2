"""The task interface the trainer runs: model, init inputs, loss, hooks, rates."""

from __future__ import annotations

from typing import Any

import jax

from video_dit.models import registry


class Task:
  """What the trainer needs to know about one training objective.

  Built from the experiment config (``__init__`` validates everything the task needs
  and raises one clear error before anything compiles). Inside the jitted train step
  the trainer calls ``prepare(batch, key)`` once per step and ``loss(params, batch,
  keys)`` per micro-batch (``keys``: one key per example, so micro-batching changes no
  draw). On the host it calls ``host_batch`` before sharding a batch, ``periodic``'s
  ``maybe_write(step, ema_params)`` after every step, and ``finish`` at the end.
  """

  name = ""

  def __init__(self, config):
    self.config = config
    self.model = registry.build_model(config)

  def init_inputs(self) -> dict[str, Any]:
    """Keyword inputs of ``model.init`` (batch 1)."""
    return registry.dummy_inputs(self.config, 1)

  def prepare(self, batch: dict, key: jax.Array) -> dict:
    """Per-step additions to the global batch, inside the step (e.g. dropout flags)."""
    del key
    return batch

  def loss(self, params, batch: dict, keys: jax.Array,
           frozen=None) -> tuple[jax.Array, dict]:
    """(scalar loss, aux metrics) of a (micro-)batch; ``frozen`` is ``frozen(mesh)``."""
    raise NotImplementedError

  def frozen(self, mesh):
    """Arrays the loss reads but does not train (a teacher's parameters), placed on
    ``mesh``; they enter the jitted step as an argument. None when there are none."""
    del mesh
    return None

  def warm_start(self, params):
    """A fresh run's parameters (no checkpoint to resume, no ``ckpt.init_from``):
    ``params`` as initialised, or what the task makes of them (a student takes its
    teacher's)."""
    return params

  def host_batch(self, batch: dict) -> dict:
    """A pipeline batch on the host, before it is sharded (default: unchanged)."""
    return batch

  def step_rates(self) -> tuple[float, float]:
    """(model FLOPs, tokens) per train step for throughput metrics; 0 = not counted."""
    return 0.0, 0.0

  def periodic(self, mesh, workdir: str):
    """An object with ``due(step)`` and ``maybe_write(step, ema_params)``, or None."""
    del mesh, workdir
    return None

  def finish(self, workdir: str, state) -> None:
    """After the last step (not after a preemption)."""
    del workdir, state
