"""The fitted linear tubelet codec: exactness, the held-out PSNR bar, one fit per dataset,
and a DiT that trains on its latents and samples decoded pixels."""

import json
import os

import jax
import numpy as np
import pytest

from configs import synthetic_faces
from tests import helpers
from video_dit import pca_codec, sampling, train
from video_dit.data import pipeline
from video_dit.models import registry


def _clips(rank: int, n: int = 64, seed: int = 0) -> np.ndarray:
  """Clips whose 2x4x4 tubelets lie in a ``rank``-dimensional affine subspace."""
  rng = np.random.default_rng(seed)
  basis = rng.normal(size=(rank, 96)) / 10
  coef = rng.normal(size=(n * 4 * 8 * 8, rank))
  tub = np.tanh(0.1 + coef @ basis).reshape(n, 4, 8, 8, 96)
  return np.asarray(pca_codec.untubelets(tub, (2, 4, 4)))


def test_tubelets_round_trip_and_full_rank_codec_is_exact():
  x = _clips(96, n=4)
  np.testing.assert_array_equal(pca_codec.untubelets(pca_codec.tubelets(x, (2, 4, 4)),
                                                     (2, 4, 4)), x)
  arrays = pca_codec.fit(x, (2, 4, 4), 96, whiten=True)
  tub = pca_codec.tubelets(x, (2, 4, 4)).reshape(-1, 96)
  rec = (tub - arrays["mean"]) @ arrays["basis"].T @ arrays["basis"] + arrays["mean"]
  np.testing.assert_allclose(rec, tub, atol=1e-5)


def test_evaluation_scores_the_real_clips_through_the_codec(tmp_path):
  # evaluate.through_codec: the ceiling of a latent DiT (what its codec keeps), chunked.
  from video_dit.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  x = _clips(96, n=5)
  through = {}
  for c in (4, 96):
    path = str(tmp_path / f"c{c}.npz")
    np.savez(path, **pca_codec.fit(x, (2, 4, 4), c, whiten=False))
    with open(path[:-4] + ".json", "w") as f:
      json.dump(dict(tubelet=[2, 4, 4]), f)
    codec = pca_codec.PCACodec(path)
    through[c] = evaluate.through_codec(codec, x, chunk=3)
    assert through[c].dtype == np.uint8 and through[c].shape == x.shape
    np.testing.assert_array_equal(through[c], evaluate.through_codec(codec, x, chunk=8))
  real = np.round((x + 1) * 127.5)
  assert np.abs(through[96] - real).max() <= 1  # every component: the clips, rounded
  assert np.abs(through[4] - real).mean() > 2   # 4 of 96: visibly less


def test_psnr_grows_with_components_and_latents_are_whitened(tmp_path):
  x = _clips(96)
  values = []
  for c in (4, 12, 48):
    arrays = pca_codec.fit(x, (2, 4, 4), c, whiten=True)
    path = str(tmp_path / f"c{c}.npz")
    np.savez(path, **arrays)
    with open(path[:-4] + ".json", "w") as f:
      json.dump(dict(tubelet=[2, 4, 4]), f)
    codec = pca_codec.PCACodec(path)
    z = np.asarray(codec.encode(x))
    assert z.shape == (64, 4, 8, 8, c)
    np.testing.assert_allclose(z.reshape(-1, c).std(0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(z.reshape(-1, c).mean(0), 0.0, atol=1e-3)
    values.append(pca_codec.psnr(np.asarray(codec.decode(z)), x).mean())
  assert values[0] < values[1] < values[2]


def _pca_config(data_dir, **extra):
  config = synthetic_faces.get_config("runlocal,codec=pca")
  with config.unlocked():
    config.data.data_dir = str(data_dir)
    for k, v in extra.items():
      group, field = k.split(".")
      config[group][field] = v
  return config


def test_ensure_fits_once_with_the_data_and_reaches_30db(tmp_path):
  config = _pca_config(tmp_path / "data")
  pipeline.ensure_dataset(config)  # builds the synthetic data, then fits the codec
  path = pca_codec.path_for(config)
  with open(path[:-4] + ".json") as f:
    info = json.load(f)
  # The bar: >= 30 dB on held-out clips (the test split: unseen identities).
  assert info["test_psnr_db"] >= 30.0, info
  assert info["test_clips"] > 0 and info["channels"] == 24
  mtime = os.stat(path).st_mtime_ns
  pipeline.ensure_dataset(config)  # a second call reuses the fit
  assert os.stat(path).st_mtime_ns == mtime
  assert not [p for p in os.listdir(os.path.dirname(path)) if ".tmp" in p]


def test_bad_codec_values_are_named_before_anything_runs(tmp_path):
  for extra, match in (({"latent.channels": 0}, "latent.channels"),
                       ({"latent.channels": 97}, "latent.channels"),
                       ({"latent.tubelet": (3, 4, 4)}, "latent.tubelet"),
                       ({"latent.codec": "jpeg"}, "latent.codec")):
    config = _pca_config(tmp_path / "data", **extra)
    with pytest.raises(ValueError, match=match):
      train.validate(config)
  assert not os.path.exists(tmp_path / "data")
  with pytest.raises(FileNotFoundError, match="fitted with the dataset"):
    pca_codec.PCACodec(str(tmp_path / "none.npz"))


def _train_two_steps_and_sample(config, tmp_path):
  state = train.train_and_evaluate(config, str(tmp_path / "run"), jax.devices()[:1])
  assert int(state.step) == 2
  helpers.save_reference_face(tmp_path / "face.png", 32)
  out = sampling.generate(str(tmp_path / "run"),
                          [dict(face=str(tmp_path / "face.png"), prompt="a person waves")],
                          str(tmp_path / "samples"), face_is_crop=True)
  assert out[0]["video_shape"] == [8, 32, 32, 3]  # decoded pixels, not latents


def test_dit_trains_on_pca_latents_and_samples_decoded_pixels(tmp_path, monkeypatch):
  config = _pca_config(tmp_path / "data", **{"sample.num_steps": 2})
  config.total_steps = 2
  assert registry.video_shape(config) == (4, 8, 8, 24)
  _train_two_steps_and_sample(config, tmp_path)
  # The run records the fit it learned; another fit in its place (e.g. refitted after
  # tools.forget_identity removed the old one) would decode its latents wrong: sampling and
  # resuming stop with one error naming both fits, before anything is written.
  run = tmp_path / "run"
  with open(run / "latent_codec.json") as f:
    recorded = json.load(f)
  path = pca_codec.path_for(config)
  assert recorded["digest"] == pca_codec.load(path).digest
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  arrays["mean"] = arrays["mean"] + 0.1
  np.savez(path, **arrays)
  monkeypatch.setattr(pca_codec, "_LOADED", {})
  with pytest.raises(ValueError, match="learned the latents of the codec fit .* is the fit"):
    sampling.generate(str(run), [dict(face=str(tmp_path / "face.png"), prompt="a person")],
                      str(tmp_path / "samples2"), face_is_crop=True)
  assert not (tmp_path / "samples2").exists()
  config_json = (run / "config.json").read_text()
  config.total_steps = 3
  with pytest.raises(ValueError, match="learned the latents of the codec fit"):
    train.train_and_evaluate(config, str(run), jax.devices()[:1])
  assert (run / "config.json").read_text() == config_json
  with config.unlocked():  # a new run started from it
    config.ckpt.init_from = str(run)
  with pytest.raises(ValueError, match="learned the latents of the codec fit"):
    train.train_and_evaluate(config, str(tmp_path / "finetune"), jax.devices()[:1])
  assert not (tmp_path / "finetune" / "config.json").exists()


def test_reference_tokens_in_latent_space(tmp_path):
  """identity.mode='separate+reference' on PCA latents: the face is encoded by the same
  codec into one latent frame of tokens; the video sees it, and sampling works."""
  config = _pca_config(tmp_path / "data", **{"sample.num_steps": 2,
                                            "identity.mode": "separate+reference"})
  config.total_steps = 2
  pipeline.ensure_dataset(config)
  # With mode 'reference' alone the face reaches the video only through these tokens.
  only_tokens = _pca_config(tmp_path / "data", **{"identity.mode": "reference"})
  model, params = helpers.init(only_tokens)
  params = helpers.perturb_zeros(params)
  inputs = registry.random_inputs(only_tokens, 2, seed=0)
  other = dict(inputs, face=inputs["face"][::-1])
  a, b = helpers.apply(model, params, inputs), helpers.apply(model, params, other)
  assert not np.allclose(a, b)
  # The codec maps the face (a clip of its tubelet depth) to one latent frame the size
  # of the video latents, which the DiT patchifies like them.
  codec = pca_codec.load(pca_codec.path_for(config))
  frames = np.repeat(np.asarray(inputs["face"])[:, None], 2, axis=1)
  latent = np.asarray(codec.encode(frames))
  assert latent.shape == (2, 1, 8, 8, 24)
  _train_two_steps_and_sample(config, tmp_path)
  config.unlock()
  config.latent.update(codec="vae", vae_workdir=str(tmp_path), shape=(4, 8, 8, 24))
  with pytest.raises(ValueError, match="not with a VAE"):
    registry.model_config(config)



def test_pixel_tubelet_scales_the_patch_by_the_codec():
  """What the evaluator's seam metric cuts videos into: the pixels one DiT token covers."""
  pixels = synthetic_faces.get_config("runlocal")
  assert registry.pixel_tubelet(pixels) == tuple(pixels.model.patch)
  latent = synthetic_faces.get_config("runlocal,codec=pca")  # 2x4x4 codec, 1x2x2 patches
  assert registry.pixel_tubelet(latent) == (2, 8, 8)
  # A causal VAE's first latent frame stands for one pixel frame and the others for
  # several: no fixed tubelet, even where 9 frames happen to divide into 3.
  from configs import faces_latent  # pylint: disable=g-import-not-at-top
  vae = faces_latent.get_config()
  assert registry.video_shape(vae)[0] == 3 and registry.pixel_shape(vae)[0] == 9
  assert registry.pixel_tubelet(vae) is None
