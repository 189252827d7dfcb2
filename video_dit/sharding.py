"""Device mesh, the one logical -> mesh axis table, and sharding helpers.

Model code names only *logical* axes (``embed``, ``act_batch``, ...). This module
alone knows how they land on the physical mesh ('data', 'fsdp', 'tensor'):

* parameters: ``embed`` and ``id_embed`` are split over 'fsdp' (ZeRO-3 style),
  ``mlp``/``heads``/``vocab`` over 'tensor' (Megatron style);
* activations: the batch over ('data', 'fsdp'), heads and MLP hidden over 'tensor'.

A dimension that the assigned mesh axes do not divide stays replicated (a 6-head
model on tensor=4 still runs), so every config shards as far as it can.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")

# The one logical -> mesh table. Values are a mesh axis, a tuple of them, or None.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # Parameters.
    ("embed", "fsdp"),
    ("id_embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("kv", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("layers", None),      # the stacked-block axis of scanned layers
    # Activations.
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_text_len", None),
    ("act_id_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
)
_RULES = dict(LOGICAL_RULES)


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh from config sizes.

  Args:
    mesh_config: mapping with integer entries ``data``, ``fsdp``, ``tensor``; at
      most one may be -1, meaning "all remaining devices".
    devices: defaults to ``jax.devices()``.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = []
  for name in MESH_AXES:
    if name not in mesh_config:
      raise ValueError(f"config.mesh has no '{name}' size; set config.mesh.{name} "
                       "(use -1 for 'all remaining devices').")
    size = int(mesh_config[name])
    if size == 0 or size < -1:
      raise ValueError(f"config.mesh.{name}={size} is invalid; use a positive size or -1.")
    sizes.append(size)
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={dict(zip(MESH_AXES, sizes))} has more than one -1; "
                     "at most one axis may take the remaining devices.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % known:
      raise ValueError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: the fixed axes "
                       f"({known} devices) do not divide the {n} available devices; "
                       f"choose sizes whose product divides {n}.")
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n:
    raise ValueError(f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices but {n} are available; make the product of the sizes "
                     f"equal {n} or set one axis to -1.")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(names: Iterable[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> P:
  """Maps logical axis names to a PartitionSpec through ``LOGICAL_RULES``.

  With ``shape`` and ``mesh``, a dimension keeps the longest prefix of its mesh
  axes whose total size divides it (the rest of it is replicated), and mesh axes
  already used by an earlier dimension are skipped.
  """
  used: set[str] = set()
  spec = []
  names = tuple(names)
  for i, name in enumerate(names):
    if name is not None and name not in _RULES:
      raise KeyError(f"logical axis '{name}' is not in sharding.LOGICAL_RULES; "
                     f"known: {sorted(_RULES)}")
    axes = [a for a in _as_tuple(_RULES.get(name)) if a not in used]
    if mesh is not None:
      axes = [a for a in axes if a in mesh.shape]
      if shape is not None:
        while axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
          axes.pop()
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*spec)


def _current_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical names; no-op without a mesh."""
  mesh = _current_mesh()
  if mesh is None:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"constrain: {len(names)} names {tuple(names)} for an array of "
                     f"shape {x.shape}")
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def logical_specs(boxed_tree) -> Any:
  """Tree of logical-name tuples (None for un-annotated leaves) of a boxed tree."""
  def names(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return tuple(leaf.names)
    return None
  return jax.tree.map(names, boxed_tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def tree_shardings(boxed_tree, mesh: Mesh) -> Any:
  """NamedShardings for a (possibly abstract) tree of ``nn.LogicallyPartitioned``.

  Works on the output of ``jax.eval_shape(model.init, ...)``; the result has the
  structure of the unboxed tree (``nn.unbox``). Un-annotated leaves replicate.
  """
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      value = leaf.value
      spec = logical_to_spec(leaf.names, value.shape, mesh)
    else:
      spec = P()
    return NamedSharding(mesh, spec)
  return jax.tree.map(one, boxed_tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def shard_batch(tree, mesh: Mesh):
  """Process-local host batches -> global arrays sharded over ('data', 'fsdp').

  Each process passes its own slice of the global batch (all of it when there
  is one process); the leading dimensions are concatenated in process order.
  """
  def put(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    spec = logical_to_spec(("act_batch",) + (None,) * (x.ndim - 1), global_shape, mesh)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x, global_shape)
  return jax.tree.map(put, tree)


def shard_copies(tree, mesh: Mesh):
  """Host batches that every process holds whole (the same values) -> global arrays
  sharded over ('data', 'fsdp'); each process places the slices its devices hold."""
  def put(x):
    x = np.asarray(x)
    spec = logical_to_spec(("act_batch",) + (None,) * (x.ndim - 1), x.shape, mesh)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])
  return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
  """A host tree every process holds whole (e.g. restored parameters) -> global arrays
  replicated on every device of the mesh (multi-process jit takes no host arrays)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda i, x=np.asarray(x): x[i]), tree)


def to_host(x) -> np.ndarray:
  """A global array -> the whole value on every process (numpy)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def jit_init(init_fn, mesh: Mesh, *args):
  """Initialises a boxed tree directly into its shardings (no full host copy).

  ``init_fn(*args)`` returns a tree of ``nn.LogicallyPartitioned``; it is traced
  once abstractly (eval_shape) to derive the shardings, then run under jit with
  those as out_shardings. Returns (unboxed tree, shardings).
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = tree_shardings(abstract, mesh)
  with jax.set_mesh(mesh):
    tree = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return tree, shardings


def check_batch(batch: int, mesh: Mesh) -> None:
  """The global batch must split evenly over the batch axes ('data', 'fsdp')."""
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch % n:
    raise ValueError(f"batch size {batch} is not divisible by data*fsdp={n} "
                     f"(mesh {dict(mesh.shape)}); use a multiple of {n}.")
