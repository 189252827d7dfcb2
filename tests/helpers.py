"""Shared helpers: the runlocal config, jitted init, and param perturbation."""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from PIL import Image

from configs import synthetic_faces
from video_dit.data import synthetic
from video_dit.models import registry


def runlocal_config(**overrides):
  """The real config's runlocal branch; ``overrides`` are 'group.field' -> value."""
  config = synthetic_faces.get_config("runlocal")
  for path, value in overrides.items():
    group, field = path.split(".")
    config[group][field] = value
  return config


@functools.lru_cache(maxsize=None)
def _jit_init(model):
  return jax.jit(lambda key, inputs: nn.unbox(model.init(key, **inputs)))


def init(config, seed: int = 0):
  """(model, params) with params initialised under jit."""
  model, _ = registry.build(config)
  params = _jit_init(model)(jax.random.key(seed), registry.dummy_inputs(config, 1))
  return model, params


@functools.lru_cache(maxsize=None)
def jit_apply(model):
  """One compiled apply per model (and input signature), shared across tests."""
  return jax.jit(lambda params, inputs: model.apply(params, **inputs))


def apply(model, params, inputs, **extra):
  return np.asarray(jit_apply(model)(params, dict(inputs, **extra)))


def xla_flags(devices: int | None = None) -> str:
  """The tests' XLA_FLAGS (tests/conftest.py: fast compiles) for a subprocess, with
  ``devices`` fake CPU devices (None: XLA's default, one)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if devices:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  return " ".join(flags)


def save_reference_face(path, size: int) -> str:
  """A synthetic identity's reference face crop as a PNG at ``path`` (for sampling)."""
  face = synthetic.render_reference(synthetic.identity_attributes(0, 3), size,
                                    np.random.default_rng(0))
  Image.fromarray(face).save(path)
  return str(path)


def perturb_zeros(params, seed: int = 1, keep=("id_gate", "extra_gate"), scale=0.05):
  """Replaces all-zero leaves (adaLN-Zero, zero-init outputs, biases) with noise,
  except those whose path names one of ``keep``, so outputs become non-trivial."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, x), k in zip(leaves, keys):
    name = jax.tree_util.keystr(path)
    if not np.any(np.asarray(x)) and not any(s in name for s in keep):
      x = scale * jax.random.normal(k, x.shape, x.dtype)
    out.append(x)
  return jax.tree_util.tree_unflatten(treedef, out)


def set_leaves(params, name: str, value: float):
  """Sets every leaf whose path contains ``name`` to ``value``."""
  def f(path, x):
    return jnp.full_like(x, value) if name in jax.tree_util.keystr(path) else x
  return jax.tree_util.tree_map_with_path(f, params)


def train_tiny_run(root, steps: int = 2, identities: int = 4, **overrides) -> str:
  """A runlocal run of ``steps`` steps on a synthetic dataset of ``identities`` under
  ``root`` (one device); returns its workdir, ``root/run``. ``overrides`` as
  runlocal_config's."""
  from video_dit import train  # pylint: disable=g-import-not-at-top
  from video_dit.data import builders  # pylint: disable=g-import-not-at-top
  data_dir = str(root / "data")
  spec = synthetic.SyntheticSpec(num_identities=identities, clips_per_identity=2, frames=8,
                                 height=32,
                                 width=32, face_size=32)
  builders.SyntheticFaces(data_dir=data_dir, spec=spec).prepare()
  config = runlocal_config(**{"data.data_dir": data_dir, **overrides})
  config.total_steps = steps
  train.train_and_evaluate(config, str(root / "run"), jax.devices()[:1])
  return str(root / "run")
