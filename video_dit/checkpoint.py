"""Orbax checkpoints: train state + EMA + RNG, data-iterator position, config.

Every save stores a digest of each item (parameters, EMA, optimizer state, step,
RNG, data position); every restore verifies them, so a checkpoint whose files changed
or broke after saving stops with one line naming the step and the item
(``CorruptCheckpoint``) instead of training or sampling from garbage.

Saves are asynchronous (the train loop only waits for the device -> host copy)
and atomic (orbax writes a temporary folder and renames it when complete, so a
crash never leaves a checkpoint that ``latest_step`` would return). Restores
go straight into the target shardings, so a checkpoint restores onto any mesh
shape. A checkpoint whose parameter tree does not match the model fails with
one error naming the first mismatched path and both shapes.
"""

from __future__ import annotations

import dataclasses
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
                     "config": ocp.JsonCheckpointHandler(),
                     "digests": ocp.JsonCheckpointHandler()})


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
    """Starts an async save of ``step`` (the caller decides when one is due), with a
    digest of every item so that a restore can prove the files intact."""
    return self.manager.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            config=ocp.args.JsonSave(json.loads(config_json)),
            digests=ocp.args.JsonSave(state_digests(state, data_state or {}))),
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


class Incompatible(ValueError):
  """A checkpoint whose tree does not fit the model's."""


def check_compatible(saved_tree, target_tree, what: str) -> None:
  """Raises ``Incompatible`` naming the first path whose presence or shape differs."""
  saved, target = _paths_and_shapes(saved_tree), _paths_and_shapes(target_tree)
  for path in sorted(set(saved) | set(target)):
    if saved.get(path) != target.get(path):
      raise Incompatible(
          f"{what} does not fit this model: at {path} the checkpoint has "
          f"{saved.get(path, 'nothing')} and the model expects {target.get(path, 'nothing')}; "
          "use a workdir (or ckpt.init_from) made with the same model config.")


def graft(params, source, what: str, new_zero: bool = False) -> tuple[Any, list[str]]:
  """``params`` with each leaf that ``source`` (a tree of host arrays) has at the same
  path taken from it, placed like ``params``' leaf; the leaves only ``params`` has (a
  new input) keep their values. -> (params, their paths). Raises naming the first
  ``source`` leaf with no place or another shape, and with ``new_zero`` a new leaf that
  is not all zeros (only a zero-initialised input joins a trained model as a no-op)."""
  have = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  used, new = set(), []

  def take(path, leaf):
    key = path_str(path)
    if key not in have:
      if new_zero and np.any(np.asarray(jax.device_get(leaf))):
        raise Incompatible(f"{what} has no {key}, and this model initialises it to non-zero "
                           "values: the architectures differ (only zero-initialised new "
                           "inputs, e.g. frame conditioning's flag, can join a trained model).")
      new.append(key)
      return leaf
    if tuple(np.shape(have[key])) != tuple(leaf.shape):
      raise Incompatible(f"{what} has {key} of shape {np.shape(have[key])}, this model "
                         f"{tuple(leaf.shape)}: the architectures differ.")
    used.add(key)
    return jax.device_put(np.asarray(have[key], leaf.dtype), leaf.sharding)

  params = jax.tree_util.tree_map_with_path(take, params)
  if used != set(have):
    raise Incompatible(f"{what} has parameters with no place in this model "
                       f"({sorted(set(have) - used)[:4]}): the architectures differ.")
  return params, new


class CorruptCheckpoint(ValueError):
  """A checkpoint whose files cannot be read or do not match their stored digests."""


def _items(state) -> dict[str, Any]:
  """The top-level items of a train state (a TrainState or its saved dict)."""
  if isinstance(state, dict):
    return dict(state)
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def state_digests(state, data_state: dict) -> dict[str, str]:
  """A digest per item (params, ema_params, opt_state, step, rng, and the data-iterator
  state); {} when this process cannot see every array (multi-process meshes)."""
  if not all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(state)):
    return {}
  out = {name: digest(item, ordered=True) for name, item in _items(state).items()}
  out["data"] = hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).hexdigest()[:16]
  return out


def _saved_digests(manager, step: int) -> dict[str, str]:
  if "digests" not in (manager.item_metadata(step) or {}):
    return {}  # saved before checkpoints carried digests: nothing to check against
  return dict(manager.restore(step, args=ocp.args.Composite(
      digests=ocp.args.JsonRestore()))["digests"] or {})


def _first_line(e: Exception) -> str:
  return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def verify(directory: str, step: int, state, data_state: dict, manager=None) -> None:
  """Raises CorruptCheckpoint naming the first item whose digest differs."""
  if manager is None:
    with _manager(directory, read_only=True) as m:
      return verify(directory, step, state, data_state, m)
  saved = _saved_digests(manager, step)
  if not saved:
    return
  now = state_digests(state, data_state)
  for name in sorted(set(saved) & set(now)):
    if saved[name] != now[name]:
      raise CorruptCheckpoint(f"checkpoint step {step} in {directory}: '{name}' does not "
                              f"match its stored digest (the files changed after saving)")


def restore(directory: str, step: int, abstract_state) -> tuple[Any, dict]:
  """Restores ``state`` into ``abstract_state``'s shapes/shardings, plus the data state,
  and verifies both against the digests saved with them (``CorruptCheckpoint``)."""
  with _manager(directory, read_only=True) as manager:
    if step not in manager.all_steps():
      raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; it has "
                              f"{sorted(manager.all_steps())}")
    check_compatible(manager.item_metadata(step)["state"], abstract_state,
                     f"checkpoint {directory} step {step}")
    state, data_state = _restore_verified(manager, directory, step, abstract_state)
  return state, data_state


def _restore_verified(manager, directory: str, step: int, target) -> tuple[Any, dict]:
  """(state, data state) of ``step`` placed like ``target``, verified; an unreadable or
  altered checkpoint is a CorruptCheckpoint."""
  try:
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
  except Exception as e:  # pylint: disable=broad-except
    raise CorruptCheckpoint(f"checkpoint step {step} in {directory} cannot be read "
                            f"(a file is missing or truncated): {_first_line(e)}") from e
  data_state = dict(out["data"] or {})
  verify(directory, step, out["state"], data_state, manager)
  return out["state"], data_state


def last_good_step(directory: str, abstract_state, before: int) -> int | None:
  """The newest step before ``before`` whose checkpoint reads and verifies."""
  for step in sorted((s for s in steps(directory) if s < before), reverse=True):
    try:
      restore(directory, step, abstract_state)
      return step
    except CorruptCheckpoint:
      continue
  return None


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
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process
  with _manager(directory, read_only=True) as manager:
    meta = manager.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          meta)
    state, _ = _restore_verified(manager, directory, step, target)
  return step, jax.device_get(state)


def digest(tree, ordered: bool = False) -> str:
  """A stable sha256 of a tree's leaves (paths, dtypes, shapes and bytes); ``ordered``
  takes the leaves in path order, so the same arrays in other containers (a restored
  dict for a saved dataclass, namedtuple or tuple) give the same digest."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  if ordered:
    leaves = sorted(leaves, key=lambda leaf: path_str(leaf[0]))
  for path, x in leaves:
    x = np.asarray(jax.device_get(x))
    h.update(path_str(path).encode())
    h.update(f"{x.dtype}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()[:16]
