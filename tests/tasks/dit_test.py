"""The DiT task: condition dropout drawn per example and fed to the model."""

import jax
import numpy as np
import pytest

from tests import helpers
from video_dit import tasks
from video_dit.models import registry


def _task(**drops):
  config = helpers.runlocal_config(**{f"train.{k}": v for k, v in drops.items()})
  return config, tasks.for_config(config)


def test_dropout_rates_are_the_configs():
  _, task = _task(both_drop=0.1, text_drop=0.2, id_drop=0.3)
  b = task.prepare({"video": np.zeros((20000, 1))}, jax.random.key(0))
  text, ident = np.asarray(b["drop_text"]), np.asarray(b["drop_id"])
  assert np.mean(text & ident) == pytest.approx(0.1, abs=0.01)
  assert np.mean(text & ~ident) == pytest.approx(0.2, abs=0.01)
  assert np.mean(~text & ident) == pytest.approx(0.3, abs=0.01)


def test_the_drawn_flags_reach_the_model():
  config, task = _task()
  _, params = helpers.init(config)
  params = helpers.perturb_zeros(params, keep=())  # open the identity gate too
  host = registry.random_inputs(config, 4)
  batch = dict(video=host.pop("x"), **{k: v for k, v in host.items() if k != "t"})
  other_face = dict(batch, face=batch["face"][::-1])
  other_text = dict(batch, text_ids=batch["text_ids"][::-1])
  key, keys = jax.random.key(0), jax.random.split(jax.random.key(1), 4)
  loss = jax.jit(lambda p, b: task.loss(p, b, keys)[0])  # one model for every variant
  for drops, face_matters, text_matters in (
      (dict(both_drop=0.0, text_drop=0.0, id_drop=0.0), True, True),
      (dict(both_drop=1.0, text_drop=0.0, id_drop=0.0), False, False),
      (dict(both_drop=0.0, text_drop=0.0, id_drop=1.0), False, True),
      (dict(both_drop=0.0, text_drop=1.0, id_drop=0.0), True, False)):
    _, drawn = _task(**drops)
    base = float(loss(params, drawn.prepare(batch, key)))
    assert (float(loss(params, drawn.prepare(other_face, key))) != base) == face_matters, drops
    assert (float(loss(params, drawn.prepare(other_text, key))) != base) == text_matters, drops
