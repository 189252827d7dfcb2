"""Distillation tasks: one-pass guidance and shortcut (few-step) students of a trained DiT."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic_faces
from tests import helpers
from video_dit import checkpoint, conditions, sampling, tasks, train
from video_dit import workdir as workdir_lib
from video_dit.data import pipeline
from video_dit.diffusion import guidance, schedules
from video_dit.models import registry

ONE = jax.devices()[:1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A runlocal DiT trained 30 steps (non-trivial outputs) on a tiny synthetic set."""
  root = tmp_path_factory.mktemp("teacher")
  return helpers.train_tiny_run(root, steps=30, **{"optim.lr": 3e-3, "optim.warmup_steps": 2,
                                                   "ckpt.every_steps": 30})


def student_config(teacher_dir, kind="guidance", **overrides):
  config = synthetic_faces.get_config(f"runlocal,distill={kind},teacher={teacher_dir}")
  config.unlock()
  config.data.data_dir = workdir_lib.load_config(teacher_dir).data.data_dir
  config.update_from_flattened_dict({"optim.warmup_steps": 1, "train.log_every": 1,
                                     "optim.lr": 5e-4, **overrides})
  return config


def _batch_keys(config, n=8):
  c = config.copy_and_resolve_references()
  c.data.batch_size = n
  batch = next(pipeline.make_iterator(c, "train", train=False))
  batch = jax.tree.map(np.asarray, batch)
  return batch, jax.random.split(jax.random.key(7), len(batch["video"]))


def _objective(task, params, frozen, batch, keys, draws=8):
  """The task's loss on ``batch``, averaged over ``draws`` sets of times and noise."""
  fn = jax.jit(lambda p, f, k: task.loss(p, batch, k, f)[0])
  return float(np.mean([fn(params, frozen, jax.vmap(lambda k: jax.random.fold_in(k, i))(keys))
                        for i in range(draws)]))


def _student_params(task, config):
  _, params = helpers.init(config)
  return task.warm_start(params)


def test_one_pass_guidance_at_scales_1_1_is_the_conditional_model(teacher):
  config = student_config(teacher)
  task = tasks.for_config(config)
  params = _student_params(task, config)
  restored = workdir_lib.load(teacher)
  inputs = {k: v for k, v in registry.random_inputs(config, 2).items()
            if k not in ("guidance_scale", "step_size")}
  conditional = helpers.apply(restored.model, restored.params, inputs)
  assert np.abs(conditional).max() > 1e-3  # a trained teacher: not the zero function
  # Any guidance embedding (here perturbed away from its zero init) is exactly a no-op at
  # (1, 1): the one-pass model at (1, 1) is the conditional model its weights make.
  opened = helpers.perturb_zeros(params, keep=("id_gate", "extra_gate", "adaln", "final"))
  ones = np.ones((2, 2), np.float32)
  np.testing.assert_array_equal(helpers.apply(task.model, params, inputs, guidance_scale=ones),
                                conditional)
  without = helpers.apply(task.model, opened, inputs)  # the same weights, no scale input
  np.testing.assert_array_equal(helpers.apply(task.model, opened, inputs, guidance_scale=ones),
                                without)
  assert not np.allclose(helpers.apply(task.model, opened, inputs,
                                       guidance_scale=np.full((2, 2), 4.0, np.float32)), without)
  # The sampler asks it once per step.
  built_sampler = task.sampler
  assert built_sampler.one_pass and built_sampler.network_passes == built_sampler.num_steps


def _train_and_compare(config, workdir):
  task = train.validate(config)
  batch, keys = _batch_keys(config)
  frozen = task._teacher_params  # pylint: disable=protected-access
  before = _objective(task, _student_params(task, config), frozen, batch, keys)
  train.train_and_evaluate(config, workdir, ONE)
  trained = checkpoint.load_host(workdir_lib.checkpoint_dir(workdir))[1]["params"]
  after = _objective(task, trained, frozen, batch, keys)
  return task, before, after


def test_guidance_distillation_trains_toward_the_guided_teacher(teacher, tmp_path):
  config = student_config(teacher)
  config.total_steps = config.ckpt.every_steps = 40  # one checkpoint, at the end
  task, before, after = _train_and_compare(config, str(tmp_path / "student"))
  assert before > 0 and after < 0.7 * before, (before, after)
  # The student's target is the 3-pass guided teacher: at the drawn scales it differs
  # from the teacher's conditional prediction, so the objective is not trivially zero.
  x = np.random.default_rng(0).standard_normal((2,) + task.shape).astype(np.float32)
  cond = {k: v for k, v in registry.random_inputs(config, 2).items()
          if k not in ("x", "t", "guidance_scale")}
  t = np.full((2,), 0.5, np.float32)
  frozen = task._teacher_params  # pylint: disable=protected-access
  g = task._teacher_pred(frozen, x, t, cond, jnp.full((2, 2), 3.0))  # pylint: disable=protected-access
  fn = lambda x, t, c: task.teacher_model.apply(frozen, x, t, **c)
  cond_only = guidance.guided(fn)(x, t, cond)
  assert not np.allclose(g, cond_only, atol=1e-4)


def test_shortcut_trains_and_samples_in_few_steps(teacher, tmp_path):
  config = student_config(teacher, "shortcut")
  config.total_steps = config.ckpt.every_steps = 40  # one checkpoint, at the end
  task, before, after = _train_and_compare(config, str(tmp_path / "shortcut"))
  assert before > 0 and after < 0.7 * before, (before, after)
  restored = workdir_lib.load(str(tmp_path / "shortcut"))
  for steps in (1, 2, 4):
    sampler = registry.build_dit(config).sampler
    sampler = dataclasses.replace(sampler, num_steps=steps)
    assert sampler.network_passes == steps  # one pass per step: guidance is an input
    batch, _ = _batch_keys(config, 2)
    _, cond = conditions.split_batch(batch)
    video = sampling.make_sampler(task.model, task.diffusion, sampler, (2,) + task.shape)(
        restored.params, cond, jax.random.key(0))
    assert np.isfinite(np.asarray(video)).all()


def test_one_shortcut_step_jumps_from_noise_to_data(teacher):
  config = student_config(teacher, "shortcut")
  task = tasks.for_config(config)
  params = helpers.perturb_zeros(_student_params(task, config))
  sampler = dataclasses.replace(task.sampler, num_steps=1, text_scale=1.0, id_scale=1.0)
  inputs = registry.random_inputs(config, 2)
  cond = {k: v for k, v in inputs.items() if k not in ("x", "t", "step_size", "guidance_scale")}
  video = sampling.make_sampler(task.model, task.diffusion, sampler, (2,) + task.shape)(
      params, cond, jax.random.key(3))
  noise = jax.random.normal(jax.random.split(jax.random.key(3))[0], (2,) + task.shape)
  pred = helpers.apply(task.model, params, dict(cond, x=noise, t=np.ones(2, np.float32)),
                       step_size=np.ones(2, np.float32), guidance_scale=np.ones((2, 2), np.float32))
  # One jump of d = 1 from t = 1 goes the whole way: x0 = x1 - v(x1, 1, d=1).
  v = schedules.flow_velocity(pred, noise, np.ones(2, np.float32),
                              task.diffusion.config.prediction)
  np.testing.assert_allclose(np.asarray(video), noise - v, atol=1e-4)


@pytest.mark.parametrize("overrides,msg", [
    ({"distill.teacher": ""}, "needs the trained model to distil"),
    ({"model.width": 64, "model.num_heads": 2}, "another architecture"),
    ({"distill.text_scales": (3.0, 1.0)}, "0 <= lo <= hi"),
    ({"model.guidance_embed": False}, "model.guidance_embed=True"),
    ({"train.context_rate": 0.5}, "distils text-to-video only"),
])
def test_bad_distillation_configs_name_the_fix(teacher, overrides, msg):
  config = student_config(teacher, **overrides)
  with pytest.raises(ValueError, match=msg):
    train.validate(config)


@pytest.mark.parametrize("overrides,msg", [
    ({"distill.min_step": 0.3}, "1/2"),
    ({"sample.num_steps": 3}, "1, 2, 4"),
    ({"model.guidance_embed": False}, "keeps guidance in its one pass"),
])
def test_bad_shortcut_configs_name_the_fix(teacher, overrides, msg):
  config = student_config(teacher, "shortcut", **overrides)
  with pytest.raises(ValueError, match=msg):
    train.validate(config)


def test_a_training_only_loss_term_does_not_bar_the_teacher(teacher):
  """The frame-change term shapes training, not what a model predicts: a student whose
  config has it (the presets') distils a teacher trained without it; another time
  distribution still bars the teacher."""
  train.validate(student_config(teacher, **{"diffusion.motion_weight": 1.0}))
  with pytest.raises(ValueError, match="another diffusion config"):
    train.validate(student_config(teacher, **{"diffusion.t_mean": 0.7}))


def test_the_shortcut_sampler_needs_a_shortcut_model(teacher):
  config = workdir_lib.load_config(teacher)
  config.sample.sampler = "shortcut"
  with pytest.raises(ValueError, match="needs a few-step model"):
    registry.build_dit(config)
