"""Two real processes (jax.distributed over localhost, 2 CPU devices each): training with
periodic samples, evaluation and sampling give what one process gives, written once."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image, ImageSequence
import pytest

from tests import helpers
from video_dit import cli
from video_dit.data import builders, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(args, processes: int = 2, devices: int = 2):
  """Runs ``python -m args...`` as ``processes`` processes of one distributed job."""
  # No collective timeouts here: --distributed sets them (cli.CPU_COLLECTIVE_TIMEOUTS),
  # and on a loaded machine one process reaches a collective long after the other.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=helpers.xla_flags(devices))
  port = _free_port()
  extra = (lambda i: [] if processes == 1 else [
      "--distributed", f"--coordinator=localhost:{port}", f"--num_processes={processes}",
      f"--process_id={i}"])
  procs = [subprocess.Popen([sys.executable, "-m", *args, *extra(i)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(processes)]
  outs = [p.communicate(timeout=600) for p in procs]
  for i, (p, (out, err)) in enumerate(zip(procs, outs)):
    lines = [line for line in err.splitlines() if not line.startswith("[Gloo]")]
    first = next((k for k, line in enumerate(lines)
                  if "Traceback" in line or "error" in line.lower()), len(lines))
    if p.returncode != 0:  # 60 lines from the first error (an assert's repr cut them)
      pytest.fail(f"{args[0]} process {i} exited with {p.returncode}:\n"
                  + "\n".join(lines[first:first + 60]) + f"\n--- stdout tail:\n{out[-1000:]}",
                  pytrace=False)
  return outs


@pytest.mark.slow
def test_train_periodic_samples_evaluate_and_sample_across_two_processes(tmp_path):
  data, run = str(tmp_path / "data"), str(tmp_path / "run")
  spec = synthetic.SyntheticSpec(num_identities=8, clips_per_identity=2, frames=8, height=32,
                                 width=32, face_size=32, test_fraction=0.5)
  builders.SyntheticFaces(data_dir=data, spec=spec).prepare()
  _run(["experiments.train", "--config=configs/synthetic_faces.py:runlocal,steps=2",
        f"--config.data.data_dir={data}", "--config.data.num_identities=8",
        "--config.data.clips_per_identity=2", "--config.data.test_fraction=0.5",
        "--config.sample.every_steps=2", "--config.sample.num_videos=4",
        "--config.sample.num_steps=2", f"--workdir={run}"])
  # Periodic samples: the 4 held-out examples of both processes, written once.
  samples = sorted(os.listdir(os.path.join(run, "samples", "step_2")))
  assert [s for s in samples if s.endswith(".mp4")] == [f"{i:02d}.mp4" for i in range(4)]
  with open(os.path.join(run, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
  assert steps == sorted(set(steps))  # one writer

  evaluate = ["experiments.evaluate", f"--workdir={run}", "--num_videos=6",
              "--metrics=temporal", "--num_steps=2", "--chunk=4"]
  _run(evaluate)
  name = os.path.join(run, "eval", "step_2_test6_ema_euler2_text4_face2")
  with np.load(os.path.join(name, "videos.npz")) as z:
    two = z["generated"]
  _run(evaluate, processes=1, devices=1)  # the same evaluation on one device
  with np.load(os.path.join(name, "videos.npz")) as z:
    one = z["generated"]
  assert two.shape == (6, 8, 32, 32, 3)
  assert np.abs(two.astype(int) - one.astype(int)).max() <= 1

  face = helpers.save_reference_face(tmp_path / "face.png", 32)
  sample = ["experiments.sample", f"--workdir={run}", f"--face={face}", "--face_is_crop",
            "--prompt=a person waves", "--consent=synthetic test face", "--num_steps=2"]
  outs = _run(sample + [f"--out={tmp_path / 'two'}"])
  assert "two/" in outs[0][0] and "two/" not in outs[1][0]  # process 0 writes
  _run(sample + [f"--out={tmp_path / 'one'}"], processes=1, devices=1)
  frames = lambda d: np.stack([np.asarray(f.convert("RGB"), int) for f in ImageSequence.Iterator(
      Image.open(tmp_path / d / "sample_000_seed0.gif"))])
  assert frames("two").shape == (8, 32, 32, 3)
  assert np.abs(frames("two") - frames("one")).max() <= 2


def test_distributed_adds_collective_timeouts_unless_set():
  # XLA:CPU's collectives give up after 30 s by default: a two-process run failed in CI
  # when one process was still compiling (the test above, on a loaded machine).
  flags_ = cli.with_collective_timeouts("--xla_force_host_platform_device_count=2")
  assert flags_.startswith("--xla_force_host_platform_device_count=2 ")
  assert "--xla_cpu_collective_timeout_seconds=1800" in flags_
  assert "--xla_cpu_collective_call_terminate_timeout_seconds=2400" in flags_
  # A timeout the user set stays theirs.
  own = cli.with_collective_timeouts("--xla_cpu_collective_timeout_seconds=5")
  assert own.count("xla_cpu_collective_timeout_seconds") == 1 and "=5" in own
  assert cli.with_collective_timeouts("") == " ".join(
      f"--{k}={v}" for k, v in cli.CPU_COLLECTIVE_TIMEOUTS.items())
