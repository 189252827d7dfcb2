"""Precomputed (MiniLM) caption embeddings: stored with the dataset, read by the
pipeline, fed to the DiT instead of token ids, and computed for new prompts."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import helpers
from video_dit import conditions, sampling, train
from video_dit.data import builders, pipeline, synthetic, text_store
from video_dit.models import registry, text


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("text_store")
  spec = synthetic.SyntheticSpec(num_identities=4, clips_per_identity=3, frames=8, height=32,
                                 width=32, face_size=32)
  builders.SyntheticFaces(data_dir=str(root / "data"), spec=spec).prepare()
  return str(root / "data")


def _config(data_dir, **kw):
  return helpers.runlocal_config(**{"data.data_dir": data_dir, "text.encoder": "precomputed",
                                    "text.max_len": 16, **kw})


def test_store_holds_every_caption_once_and_matches_minilm(data_dir):
  path = text_store.build(data_dir, "minilm", max_len=16)
  captions = text_store.dataset_captions(data_dir)
  assert len(captions) > 1 and len(set(captions)) == len(captions)
  with np.load(path, allow_pickle=False) as f:
    assert [str(c) for c in f["captions"]] == captions
    assert f["tokens"].dtype == np.float16 and f["tokens"].shape == (len(captions), 16, 384)
  store = conditions.caption_fields(_config(data_dir))
  tokens, mask, pooled = text.minilm()([captions[0]], 16)
  row = store(captions[0])
  np.testing.assert_allclose(row["text_emb"], tokens[0], atol=2e-3)  # float16 storage
  np.testing.assert_array_equal(row["text_mask"], mask[0])
  np.testing.assert_allclose(row["text_pooled"], pooled[0], atol=1e-6)
  np.testing.assert_allclose(row["text_pooled"], text.encode_sentences([captions[0]])[0],
                             atol=1e-5)
  with pytest.raises(KeyError, match="not in"):
    store("a caption nobody wrote")
  with pytest.raises(ValueError, match="text.max_len=8"):
    text_store.TextStore(data_dir, "minilm", 8)


def test_missing_store_names_the_command(tmp_path, data_dir):
  del data_dir
  spec = synthetic.SyntheticSpec(num_identities=2, clips_per_identity=1, frames=8, height=32,
                                 width=32, face_size=32, test_fraction=0.5)
  other = str(tmp_path / "d")
  builders.SyntheticFaces(data_dir=other, spec=spec).prepare()
  with pytest.raises(FileNotFoundError, match="make_dataset embed"):
    pipeline.make_dataset(_config(other), "train")


def test_pipeline_model_training_and_sampling_use_the_embeddings(data_dir, tmp_path):
  text_store.build(data_dir, "minilm", max_len=16)
  config = _config(data_dir, **{"sample.num_steps": 2})
  batch = next(iter(pipeline.make_dataset(config, "train")))
  b = config.data.batch_size
  assert batch["text_emb"].shape == (b, 16, 384) and batch["text_mask"].shape == (b, 16)
  assert batch["text_pooled"].shape == (b, 384) and "text_ids" not in batch
  # The DiT reads the embeddings: different captions give different outputs.
  model, params = helpers.init(config)
  x0, cond = conditions.split_batch(jax.tree.map(np.asarray, batch))
  inputs = dict(x=x0[:2], t=np.full((2,), 0.5, np.float32),
                **{k: v[:1].repeat(2, 0) for k, v in cond.items()})
  p = helpers.perturb_zeros(params)
  same = helpers.apply(model, p, inputs)
  other = dict(inputs, text_emb=np.roll(inputs["text_emb"], 1, axis=-1))
  assert not np.allclose(helpers.apply(model, p, other), same, atol=1e-4)
  assert set(cond) == set(registry.dummy_inputs(config, 1)) - {"x", "t"}
  # Train two steps, then sample a prompt that is not in the dataset.
  config.total_steps = 2
  train.train_and_evaluate(config, str(tmp_path / "run"), jax.devices()[:1])
  helpers.save_reference_face(tmp_path / "face.png", 32)
  out = sampling.generate(str(tmp_path / "run"),
                          [dict(face=str(tmp_path / "face.png"), prompt="a person frowns")],
                          str(tmp_path / "samples"), face_is_crop=True)
  assert out[0]["video_shape"] == [8, 32, 32, 3]
  # A dataset caption encoded at sampling equals its stored row.
  caption = text_store.dataset_captions(data_dir)[0]
  cond = conditions.prompt_fields(config, [caption])
  row = conditions.caption_fields(config)(caption)
  np.testing.assert_allclose(cond["text_emb"][0], row["text_emb"], atol=2e-3)  # f16
  np.testing.assert_array_equal(cond["text_mask"][0], row["text_mask"])


def test_make_dataset_embed_command(data_dir):
  run = lambda *a: subprocess.run([sys.executable, "-m", "tools.make_dataset", *a],
                                  capture_output=True, text=True, timeout=300,
                                  cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                      os.path.abspath(__file__)))))
  r = run("embed", f"--data_dir={data_dir}", "--text_encoder=minilm", "--text_max_len=12")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "text_minilm.npz" in r.stdout
  with np.load(text_store.store_path(data_dir, "minilm"), allow_pickle=False) as f:
    assert f["mask"].shape[1] == 12
  r = run("embed", f"--data_dir={data_dir}")
  assert r.returncode != 0 and "--text_encoder=minilm" in r.stderr
