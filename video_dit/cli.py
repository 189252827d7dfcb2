"""What every command-line entry point does first: reject stray arguments, keep the
console quiet, join a multi-process run (``--distributed``).

Quiet by default: the libraries underneath (orbax, jax, TFDS, absl) log pages of INFO
lines; our commands show warnings, errors and their own progress only (TFDS's dataset
build bars only on a terminal). absl's ``--verbosity=0`` brings the library INFO lines
back, ``--verbosity=1`` DEBUG lines too.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging

# Library loggers whose warnings are expected in normal use, not a problem to act on.
_EXPECTED_WARNINGS = (
    "Using custom data configuration",       # TFDS, on every synthetic build
    "Given directory is read only",          # orbax, each time a checkpoint is read
    "read_only=True, setting save_interval_steps=0",
)


class _DropExpected(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return not any(s in str(record.msg) for s in _EXPECTED_WARNINGS)


def quiet_logs() -> None:
  """Warnings and our own output only, unless ``--verbosity`` was given."""
  if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present:
    return
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _DropExpected) for f in handler.filters):
    handler.addFilter(_DropExpected())
  if not sys.stderr.isatty():  # TFDS's bars would print a line per update into a log
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()


_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", os.environ.get("VIDEO_DIT_DISTRIBUTED") == "1",
    "Multi-process: call jax.distributed.initialize() first (on every process; the "
    "cluster is detected, or given by --coordinator/--num_processes/--process_id).")
_COORDINATOR = flags.DEFINE_string("coordinator", None,
                                   "With --distributed: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed.")


# XLA:CPU's cross-process collectives (Gloo) give up after 30 s by default. One process
# can reach a program's first collective minutes after another when it is still
# compiling (a loaded machine, a slower host), and the run then fails with "Gloo context
# initialization failed: DEADLINE_EXCEEDED" or aborts. A process that dies is still
# found by the coordination service's heartbeat; one that hangs alive now holds the
# others for up to 30-40 minutes instead of 30 s.
CPU_COLLECTIVE_TIMEOUTS = {"xla_cpu_collective_timeout_seconds": 1800,
                           "xla_cpu_collective_call_terminate_timeout_seconds": 2400}


def with_collective_timeouts(xla_flags: str) -> str:
  """``XLA_FLAGS`` plus the CPU collective timeouts it does not set itself."""
  extra = [f"--{k}={v}" for k, v in CPU_COLLECTIVE_TIMEOUTS.items() if k not in xla_flags]
  return " ".join([xla_flags.strip(), *extra]).strip()


def setup(argv) -> None:
  """For ``main(argv)``: no positional arguments; quiet logs; ``--distributed``."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_logs()
  if _DISTRIBUTED.value:
    # Read by XLA when the backend starts, which is after this.
    os.environ["XLA_FLAGS"] = with_collective_timeouts(os.environ.get("XLA_FLAGS", ""))
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)


# What bad input raises (a flag, a config value, a file): one line, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError)


def run(main) -> None:
  """``app.run(main)`` where bad input ends in one line, ``error: <what and the fix>``
  (exit 1): a flag or config file that does not parse (a mistyped ``--config.*`` field
  or config arg, a missing config file), and the ``USER_ERRORS`` that ``main`` raises.
  ``--verbosity=0`` shows the traceback."""

  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if flags.FLAGS["verbosity"].present:
        raise
      sys.exit(f"error: {e}")

  app.run(wrapped, flags_parser=_parse_or_exit)


def _parse_or_exit(argv):
  """absl's flag parsing (config files loaded too), a bad flag as one line instead of
  absl's FATAL message with an embedded traceback."""
  try:
    rest = flags.FLAGS(argv)
    for name in list(flags.FLAGS):  # a config file that failed to load raises on use
      hasattr(flags.FLAGS[name].value, "to_dict")
    return rest
  except (KeyError, AttributeError) as e:  # an unknown --config.* field
    text = str(e)
    key = re.search(r"'([^'\\]+)\\*'", text)
    hint = re.search(r'Did you mean \\*"([^"\\]+)', text)
    bad = [a for a in argv[1:] if a.startswith("--config.")
           and key and a[len("--config."):].split("=")[0].split(".")[-1] == key.group(1)]
    sys.exit(f"error: {' '.join(bad) or 'a --config.* override'}: no config field "
             f"{repr(key.group(1)) if key else text}"
             + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
             + "; the config file's get_config() lists the fields")
  except (flags.Error, OSError, ValueError) as e:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    sys.exit(f"error: {lines[-1] if lines else type(e).__name__}"
             + ("" if isinstance(e, flags.Error) else " (in the --config file or its arg)"))
