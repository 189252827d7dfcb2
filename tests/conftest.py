"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os
import tempfile

# The tests' programs are tiny and many: compiling them is most of the suite's time on a
# fresh machine, running them little. LLVM's optimisation level 0 compiles them faster
# (README "Three commands"); an XLA_FLAGS that sets either flag below keeps its own.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
  _FLAGS += " --xla_backend_optimization_level=0"
# XLA:CPU's older elemental fusion emitters compile the runlocal train step in ~10 s
# instead of ~17 s (same program, jaxlib 0.10.2, README "Three commands").
if "xla_cpu_use_fusion_emitters" not in _FLAGS:
  _FLAGS += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same small programs many times, also in subprocesses (which inherit
# the environment): share them through one persistent compilation cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "video_dit_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

assert jax.device_count() == 8, "tests expect 8 fake CPU devices (XLA_FLAGS)"


import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """A trained 2-step runlocal workdir (``root/run``, sampler 3 steps) and a synthetic
  reference face crop (``root/face.png``), shared by the sampling-side tests: read only."""
  from tests import helpers  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("tiny_run")
  helpers.train_tiny_run(root, **{"sample.num_steps": 3})
  helpers.save_reference_face(root / "face.png", 48)
  return root
