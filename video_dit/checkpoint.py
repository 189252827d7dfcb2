"""Orbax checkpoints: train state + EMA + RNG, data-iterator position, config.

Saves are asynchronous (the train loop only waits for the device -> host copy)
and atomic (orbax writes a temporary folder and renames it when complete, so a
crash never leaves a checkpoint that ``latest_step`` would return). Restores
go straight into the target shardings, so a checkpoint restores onto any mesh
shape. A checkpoint whose parameter tree does not match the model fails with
one error naming the first mismatched path and both shapes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

# Orbax splits replicated arrays among their replicas to write in parallel, which
# compiles a slicing program per array shape: seconds per save for hundreds of
# small parameters. Only arrays whose slices are >= 1 MiB are worth it.
# (Registering over the default logs a warning on every import; it is intended.)
_absl_logger = logging.getLogger("absl")
_level = _absl_logger.level
_absl_logger.setLevel(logging.ERROR)
try:
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20),
      override=True)
finally:
  _absl_logger.setLevel(_level)


def _manager(directory: str, keep: int | None = None,
             read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": ocp.JsonCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler()})


def checkpoint_dir(workdir: str) -> str:
  """Where a training workdir keeps its checkpoints."""
  return os.path.join(workdir, "checkpoints")


class Checkpointer:
  """Saves and restores ``{state, data, config}`` under ``workdir/checkpoints``."""

  def __init__(self, workdir: str, keep: int):
    self.directory = checkpoint_dir(workdir)
    self.manager = _manager(self.directory, keep)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict | None, config_json: str) -> bool:
    """Starts an async save of ``step`` (the caller decides when one is due)."""
    return self.manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            config=ocp.args.JsonSave(json.loads(config_json))),
        force=True)

  def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
    """(state placed like ``abstract_state``, data-iterator state) at ``step``."""
    return restore(self.directory, step, abstract_state)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def steps(directory: str) -> list[int]:
  """Saved (complete) steps under ``directory``, oldest first."""
  if not os.path.isdir(directory):
    return []
  with _manager(directory, read_only=True) as manager:
    return sorted(manager.all_steps())


def path_str(path) -> str:
  """'params/block_0/mlp/...' whatever containers held the leaf (dicts, dataclasses,
  tuples), so saved metadata and live trees compare."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def _paths_and_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_str(p): tuple(getattr(x, "shape", ())) for p, x in leaves}


def check_compatible(saved_tree, target_tree, what: str) -> None:
  """Raises naming the first path whose presence or shape differs."""
  saved, target = _paths_and_shapes(saved_tree), _paths_and_shapes(target_tree)
  for path in sorted(set(saved) | set(target)):
    if saved.get(path) != target.get(path):
      raise ValueError(
          f"{what} does not fit this model: at {path} the checkpoint has "
          f"{saved.get(path, 'nothing')} and the model expects {target.get(path, 'nothing')}; "
          "use a workdir (or ckpt.init_from) made with the same model config.")


def restore(directory: str, step: int, abstract_state) -> tuple[Any, dict]:
  """Restores ``state`` into ``abstract_state``'s shapes/shardings, plus the data state."""
  with _manager(directory, read_only=True) as manager:
    if step not in manager.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; it has "
                              f"{sorted(manager.all_steps())}")
    check_compatible(manager.item_metadata(step)["state"], abstract_state,
                     f"checkpoint {directory} step {step}")
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return out["state"], dict(out["data"] or {})


def restore_config(directory: str, step: int) -> dict:
  with _manager(directory, read_only=True) as manager:
    return dict(manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"])


def load_host(directory: str, step: int | None = None) -> tuple[int, Any]:
  """(step, saved state as a tree of numpy arrays) on this host, whatever mesh saved it."""
  available = steps(directory)
  if not available:
    raise FileNotFoundError(f"no checkpoints in {directory}")
  step = available[-1] if step is None else step
  if step not in available:
    raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; it has {available}")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with _manager(directory, read_only=True) as manager:
    meta = manager.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          meta)
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  return step, jax.device_get(out["state"])


def digest(tree) -> str:
  """A stable sha256 of a tree's leaves (paths, dtypes, shapes and bytes)."""
  h = hashlib.sha256()
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    x = np.asarray(jax.device_get(x))
    h.update(path_str(path).encode())
    h.update(f"{x.dtype}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]
