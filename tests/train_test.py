"""The trainer: learning, mesh equivalence, bit-exact resume, preemption, bad checkpoints."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from video_dit import checkpoint, conditions, sharding, train, video_io
from video_dit.data import builders, pipeline, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("data"))
  spec = synthetic.SyntheticSpec(num_identities=10, clips_per_identity=4, frames=8, height=32,
                                 width=32, face_size=32, seed=0)
  builders.SyntheticFaces(data_dir=d, spec=spec).prepare()
  return d


ONE = jax.devices()[:1]  # most tests need no mesh, and compile much faster without one


def _config(data_dir, **overrides):
  base = {"data.data_dir": data_dir, "train.log_every": 1, "ckpt.every_steps": 3,
          "optim.schedule": "constant", "optim.warmup_steps": 2}
  base.update(overrides)
  config = helpers.runlocal_config(**{k: v for k, v in base.items() if k != "total_steps"})
  config.total_steps = overrides.get("total_steps", 6)
  return config


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def _digest(workdir, step=None):
  return checkpoint.digest(checkpoint.load_host(os.path.join(workdir, "checkpoints"), step)[1])


def test_loss_falls_on_a_tiny_run(data_dir, tmp_path):
  config = _config(data_dir, total_steps=30, **{"optim.lr": 2e-3, "ckpt.every_steps": 30})
  task = train.validate(config)
  model, diffusion = task.model, task.diffusion
  batch = next(pipeline.make_iterator(config, "test", train=False))
  x0, cond = conditions.split_batch(batch)

  @jax.jit
  def eval_loss(params):  # held-out batch, fixed keys: a deterministic probe
    fn = lambda x, t, c: model.apply(params, x, t, **c)
    return jnp.mean(jnp.stack([diffusion.loss(fn, x0, cond, jax.random.key(i))[0]
                               for i in range(8)]))

  _, params0 = helpers.init(config)
  state = train.train_and_evaluate(config, str(tmp_path), ONE)
  before, after = float(eval_loss(params0)), float(eval_loss(jax.device_get(state.params)))
  assert after < 0.9 * before, (before, after)  # the probe has no noise: a real 10% drop
  assert os.path.isfile(tmp_path / "config.json")
  assert os.listdir(tmp_path / "tensorboard")
  assert len(_losses(tmp_path)) == 30


def test_one_device_and_mesh_give_the_same_losses(data_dir, tmp_path):
  one = _config(data_dir, total_steps=4, **{"mesh.data": 1})
  train.train_and_evaluate(one, str(tmp_path / "one"), ONE)
  mesh = _config(data_dir, total_steps=4, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  train.train_and_evaluate(mesh, str(tmp_path / "mesh"))
  np.testing.assert_allclose(_losses(tmp_path / "mesh"), _losses(tmp_path / "one"), atol=1e-5,
                             rtol=1e-5)


def test_resume_is_bit_exact_and_restores_onto_another_mesh(data_dir, tmp_path):
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(_config(data_dir, total_steps=6), straight, ONE)
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(_config(data_dir, total_steps=3), resumed, ONE)
  assert checkpoint.steps(os.path.join(resumed, "checkpoints")) == [3]
  train.train_and_evaluate(_config(data_dir, total_steps=6), resumed, ONE)
  assert _digest(resumed) == _digest(straight)
  assert _losses(resumed) == _losses(straight)
  # The same checkpoint restores onto a (2, 2, 2) mesh and trains on.
  other = _config(data_dir, total_steps=7, **{"mesh.data": 2, "mesh.fsdp": 2,
                                               "mesh.tensor": 2})
  state = train.train_and_evaluate(other, resumed)
  assert int(state.step) == 7
  kernel = state.params["params"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_incompatible_checkpoint_names_the_first_mismatch(data_dir, tmp_path):
  train.train_and_evaluate(_config(data_dir, total_steps=3), str(tmp_path), ONE)
  wider = _config(data_dir, total_steps=6, **{"model.mlp_ratio": 2.0})
  with pytest.raises(ValueError, match=r"at ema_params/params/block_0/mlp/fc1/bias the "
                                       r"checkpoint has \(256,\) and the model expects \(128,\)"):
    train.train_and_evaluate(wider, str(tmp_path), ONE)


def test_init_from_a_model_this_one_extends_grafts_its_parameters(data_dir, tmp_path):
  plain = str(tmp_path / "plain")
  train.train_and_evaluate(_config(data_dir, total_steps=3), plain, ONE)
  extended = _config(data_dir, **{"train.context_rate": 0.5, "ckpt.init_from": plain})
  task = train.validate(extended)
  mesh = sharding.make_mesh(extended.mesh, ONE)
  state, _ = train.init_train_state(extended, task, train.optimizer(extended), mesh)
  state = train.restore(extended, checkpoint.Checkpointer(str(tmp_path / "framed"), 1), state,
                        None, task)
  saved = checkpoint.load_host(os.path.join(plain, "checkpoints"))[1]
  new = state.params["params"].pop("context_embed")
  np.testing.assert_array_equal(jax.device_get(new), 0.0)  # joins as a no-op
  assert checkpoint.digest(jax.device_get(state.params), ordered=True) == checkpoint.digest(
      saved["params"], ordered=True)
  pooled = _config(data_dir, **{"identity.pooled_to_adaln": True, "ckpt.init_from": plain})
  task = train.validate(pooled)
  state, _ = train.init_train_state(pooled, task, train.optimizer(pooled), mesh)
  with pytest.raises(ValueError, match="id_pool.*non-zero"):  # a new input that is no no-op
    train.restore(pooled, checkpoint.Checkpointer(str(tmp_path / "pooled"), 1), state, None,
                  task)
  wider = _config(data_dir, total_steps=1, **{"model.mlp_ratio": 2.0, "ckpt.init_from": plain})
  with pytest.raises(ValueError, match="fc1/bias of shape"):
    train.train_and_evaluate(wider, str(tmp_path / "wider"), ONE)


def test_frame_conditioned_training_learns_the_frames_after_given_ones(data_dir, tmp_path):
  config = _config(data_dir, total_steps=30, **{"optim.lr": 2e-3, "train.context_rate": 1.0,
                                                 "ckpt.every_steps": 30})
  task = train.validate(config)
  batch = next(pipeline.make_iterator(config, "test", train=False))
  x0, cond = conditions.split_batch(batch)
  given = dict(context=x0, context_mask=np.broadcast_to(np.arange(8) < 4, (8, 8)))

  @jax.jit
  def eval_loss(params):
    fn = lambda x, t, c: task.model.apply(params, x, t, **c)
    return jnp.mean(jnp.stack([task.diffusion.loss(fn, x0, dict(cond, **given),
                                                   jax.random.key(i))[0] for i in range(8)]))

  _, params0 = helpers.init(config)
  state = train.train_and_evaluate(config, str(tmp_path), ONE)
  before, after = float(eval_loss(params0)), float(eval_loss(jax.device_get(state.params)))
  assert after < 0.9 * before, (before, after)


def test_nonfinite_loss_stops_naming_the_step_or_skips(data_dir, tmp_path):
  blowup = {"optim.lr": 1e38, "optim.warmup_steps": 0, "optim.grad_clip": 0.0}
  with pytest.raises(FloatingPointError, match=r"at step \d+; stopping"):
    train.train_and_evaluate(_config(data_dir, total_steps=6, **blowup), str(tmp_path / "a"),
                             ONE)
  state = train.train_and_evaluate(
      _config(data_dir, total_steps=6, **blowup, **{"train.nonfinite": "skip"}),
      str(tmp_path / "b"), ONE)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))
  with open(tmp_path / "b/metrics.jsonl") as f:
    assert any(json.loads(line).get("skipped") for line in f)


def test_lagged_metrics_still_stop_at_the_failing_step_and_never_save_it(data_dir, tmp_path):
  """Metrics are read one step late between logs: a non-finite step is still named, and
  no checkpoint or periodic sample at or after it is written."""
  blowup = {"optim.lr": 1e38, "optim.warmup_steps": 4, "optim.grad_clip": 0.0,
            "train.log_every": 100, "ckpt.every_steps": 2, "sample.every_steps": 1,
            "sample.num_videos": 1, "sample.num_steps": 1}
  with pytest.raises(FloatingPointError, match=r"at step \d+; stopping") as err:
    train.train_and_evaluate(_config(data_dir, total_steps=8, **blowup), str(tmp_path), ONE)
  failed = int(re.search(r"at step (\d+)", str(err.value)).group(1))
  assert 2 < failed < 8, failed  # past the first step, so it was read late
  saved = checkpoint.steps(os.path.join(tmp_path, "checkpoints"))
  assert saved and max(saved) < failed, (saved, failed)
  sampled = [int(d.split("_")[1]) for d in os.listdir(tmp_path / "samples")]
  assert sampled and max(sampled) < failed, (sampled, failed)


def test_bad_training_config_raises_before_compiling(data_dir):
  with pytest.raises(ValueError, match="optim.schedule='linear' is unknown"):
    train.validate(_config(data_dir, **{"optim.schedule": "linear"}))
  with pytest.raises(ValueError, match="not divisible by optim.grad_accum=3"):
    train.validate(_config(data_dir, **{"optim.grad_accum": 3}))


@pytest.mark.parametrize("overrides,msg", [
    ({"total_steps": 0}, "total_steps=0 must be >= 1"),
    ({"ckpt.keep": 0}, "ckpt.keep=0 must be >= 1"),
    ({"ckpt.every_steps": 0}, "ckpt.every_steps=0 must be >= 1"),
    ({"train.log_every": 0}, "train.log_every=0 must be >= 1"),
    ({"optim.lr": float("nan")}, "optim.lr=nan must be a finite number > 0"),
    ({"optim.lr": -1e-4}, "optim.lr=-0.0001 must be a finite number > 0"),
    ({"optim.lr": float("inf")}, "optim.lr=inf must be a finite number > 0"),
])
def test_bad_values_stop_before_anything_is_written(data_dir, tmp_path, overrides, msg):
  total = overrides.pop("total_steps", 2)
  config = _config(data_dir, total_steps=total, **overrides)
  with pytest.raises(ValueError, match=msg):
    train.train_and_evaluate(config, str(tmp_path / "w"), ONE)
  assert not os.path.exists(tmp_path / "w")  # not even W/config.json


def test_an_unknown_config_key_is_one_line_naming_it(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "experiments.train",
                      "--config=configs/synthetic_faces.py:runlocal",
                      f"--workdir={tmp_path / 'w'}", "--config.model.widht=3"],
                     cwd=root, capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "--config.model.widht=3" in r.stderr and '"width"' in r.stderr
  assert not os.path.exists(tmp_path / "w")


def test_gradient_accumulation_matches_the_full_batch(data_dir, tmp_path):
  full = _config(data_dir, total_steps=3)
  a = train.train_and_evaluate(full, str(tmp_path / "full"), ONE)
  accum = _config(data_dir, total_steps=3, **{"optim.grad_accum": 4})
  b = train.train_and_evaluate(accum, str(tmp_path / "accum"), ONE)
  np.testing.assert_allclose(_losses(tmp_path / "accum"), _losses(tmp_path / "full"),
                             rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-4),
               jax.device_get(b.params), jax.device_get(a.params))


def _train_cmd(workdir, data_dir, total_steps):
  return [sys.executable, "-m", "experiments.train",
          "--config=configs/synthetic_faces.py:runlocal", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.total_steps={total_steps}",
          "--config.ckpt.every_steps=4", "--config.optim.schedule=constant"]


def _env():
  # One CPU device (fast to compile); the three runs share compiled programs.
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=helpers.xla_flags(),
              JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _wait_for_checkpoint(workdir, proc, timeout=240):
  ckpts = os.path.join(workdir, "checkpoints")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts)):
      return
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.2)
  raise TimeoutError("no checkpoint appeared")


@pytest.mark.slow
def test_sigkill_resumes_bit_exact_and_sigterm_saves(data_dir, tmp_path):
  total = 60
  straight = str(tmp_path / "straight")
  subprocess.run(_train_cmd(straight, data_dir, total), cwd=REPO, env=_env(), check=True,
                 capture_output=True, timeout=600)

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_train_cmd(killed, data_dir, total), cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  _wait_for_checkpoint(killed, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  kept = checkpoint.steps(os.path.join(killed, "checkpoints"))
  assert kept and kept[-1] < total
  out = subprocess.run(_train_cmd(killed, data_dir, total), cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and "resumed from" in out.stdout + out.stderr
  assert _digest(killed) == _digest(straight)
  # The replayed steps are logged once: the metrics are the uninterrupted run's.
  assert _losses(killed) == _losses(straight)
  assert not os.path.exists(os.path.join(killed, "train.lock"))  # released at the end

  termed = str(tmp_path / "termed")
  proc = subprocess.Popen(_train_cmd(termed, data_dir, total), cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  _wait_for_checkpoint(termed, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  output = proc.stdout.read().decode()
  assert "finishing the step, saving" in output
  saved = checkpoint.steps(os.path.join(termed, "checkpoints"))[-1]
  assert 0 < saved < total  # it stopped early, on a checkpoint of the step it reached
  step, state = checkpoint.load_host(os.path.join(termed, "checkpoints"))
  assert step == saved and int(state["step"]) == saved


def test_a_second_trainer_on_the_same_workdir_refuses(data_dir, tmp_path):
  config = _config(data_dir, total_steps=2)
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "config.json").write_text("theirs")
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (workdir / "train.lock").write_text(json.dumps(dict(
        pid=holder.pid, host=socket.gethostname(), started="2026-11-30T00:00:00Z")))
    with pytest.raises(RuntimeError, match=f"in use by another trainer \\(pid {holder.pid}"):
      train.train_and_evaluate(config, str(workdir), ONE)
    assert (workdir / "config.json").read_text() == "theirs"  # nothing was touched
  finally:
    holder.kill()
    holder.wait()
  # The holder is gone: its lock is stale and the next trainer takes over.
  train.train_and_evaluate(config, str(workdir), ONE)
  assert checkpoint.steps(str(workdir / "checkpoints")) == [2]
  assert not (workdir / "train.lock").exists()


def test_metrics_rows_after_the_restored_step_are_dropped(tmp_path):
  from video_dit import metrics  # pylint: disable=g-import-not-at-top
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(dict(step=s, loss=1.0 / s)) + "\n" for s in (5, 10, 15))
                  + '{"step": 20, "lo')  # a torn last line
  writer = metrics.MetricWriter(str(tmp_path), after=10)
  writer.write(15, dict(loss=0.5))
  writer.close()
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["step"] for r in rows] == [5, 10, 15] and rows[-1]["loss"] == 0.5


def test_periodic_samples_are_written(data_dir, tmp_path):
  config = _config(data_dir, total_steps=2, **{"sample.every_steps": 2, "sample.num_videos": 2,
                                               "sample.num_steps": 2})
  train.train_and_evaluate(config, str(tmp_path), ONE)
  folder = tmp_path / "samples" / "step_2"
  assert sorted(os.listdir(folder)) == ["00.mp4", "00.png", "01.mp4", "01.png"]
  frames, _ = video_io.read_video(str(folder / "00.mp4"))
  assert frames.shape == (8, 32, 32, 3)
