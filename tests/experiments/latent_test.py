"""The latent-space chain end to end on tiny configs: train the VAE through the trainer,
encode the dataset into a latent cache, train the DiT on it (MiniLM text from the
dataset's store) and on the fly, sample (decoded to pixels) and evaluate."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import faces_latent, vae_synthetic
from tests import helpers
from video_dit import latents, sampling, train, video_io, workdir
from video_dit.data import builders, pipeline
from video_dit.evaluation import evaluate


def _with(config, **kw):
  with config.unlocked():
    for path, value in kw.items():
      group, field = path.split(".")
      config[group][field] = value
  return config


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  root = tmp_path_factory.mktemp("latent")
  vae_config = _with(vae_synthetic.get_config("runlocal,steps=10"),
                     **{"data.data_dir": str(root / "pixels")})
  train.train_and_evaluate(vae_config, str(root / "vae"), jax.devices()[:1])
  info = latents.encode_dataset(str(root / "vae"), str(root / "pixels"),
                                str(root / "cache"), batch=4)
  return root, vae_config, info


def test_vae_stores_latent_statistics_of_its_checkpoint(chain):
  root, _, _ = chain
  stats = workdir.read_stats(str(root / "vae"))
  assert stats["step"] == 10 and len(stats["shift"]) == len(stats["scale"]) == 4
  assert all(s > 0 for s in stats["scale"]) and stats["num_latents"] > 0
  codec = workdir.LatentCodec(str(root / "vae"))
  x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 32, 32, 3)).astype(np.float32)
  z = codec.encode(x)
  assert z.shape == (2, 3, 8, 8, 4)
  out = np.asarray(codec.decode(z))
  assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1


def test_cache_holds_the_codec_latents_of_each_clip_and_its_source_fields(chain):
  root, vae_config, info = chain
  assert info["latent_shape"] == [3, 8, 8, 4] and info["records"]["train"] > 0
  cache = builders.data_source(str(root / "cache"), "test")
  pixels = builders.data_source(str(root / "pixels"), "test")
  rec, src = cache[0], pixels[0]
  assert rec["caption"] == src["caption"] and rec["face"] == src["face"]
  clip = pipeline.centre_clip(src, 5, 32, 32)
  want = np.asarray(workdir.LatentCodec(str(root / "vae")).encode(clip[None]))[0]
  np.testing.assert_allclose(builders.decode_latents(rec), want, atol=2e-2, rtol=1e-2)
  assert os.path.exists(os.path.join(info["path"], "latents.json"))
  # Re-running reuses the cache.
  again = latents.encode_dataset(str(root / "vae"), str(root / "pixels"),
                                 str(root / "cache"))
  assert again["reused"] and again["path"] == info["path"]


def test_dit_trains_on_the_cache_samples_decode_and_evaluation_runs(chain, tmp_path):
  root, _, _ = chain
  config = faces_latent.get_config(f"runlocal,vae={root / 'vae'},cache={root / 'cache'},steps=3")
  config = _with(config, **{"sample.num_steps": 2})
  pipeline.ensure_dataset(config)  # stores the captions' MiniLM embeddings in the cache
  batch = next(iter(pipeline.make_dataset(config, "train")))
  assert batch["video"].shape[1:] == (3, 8, 8, 4) and batch["text_emb"].shape[-1] == 384
  train.train_and_evaluate(config, str(tmp_path / "dit"), jax.devices()[:1])
  helpers.save_reference_face(tmp_path / "face.png", 32)
  out = sampling.generate(str(tmp_path / "dit"),
                          [dict(face=str(tmp_path / "face.png"), prompt="a person waves")],
                          str(tmp_path / "samples"), face_is_crop=True)
  assert out[0]["video_shape"] == [5, 32, 32, 3]  # decoded pixels, not latents
  results = evaluate.evaluate(str(tmp_path / "dit"), num_videos=4, metrics=("temporal", "cost"))
  assert results["num_videos"] == 4
  # The ceiling of a latent model: the real clips through its VAE, scored beside them.
  temp = results["temporal"]
  assert set(temp["codec"]) == set(temp["real"]) and temp["codec"] != temp["real"]
  # Cost per video-second in latent space: the seconds are the decoded pixel frames
  # (5 at sample.fps, not 3 latent frames), and the VAE decode is part of the cost.
  cost = results["cost"]
  assert cost["video_seconds_per_sample"] == pytest.approx(5 / config.sample.fps)
  assert cost["decode_flops_per_sample"] > 0 and cost["decode_seconds_per_sample"] > 0
  assert cost["flops_per_sample"] == pytest.approx(
      cost["dit_flops_per_sample"] + cost["decode_flops_per_sample"])
  assert cost["seconds_per_video_second"] == pytest.approx(
      cost["seconds_per_sample"] / cost["video_seconds_per_sample"])
  with open(tmp_path / "dit" / "eval" / "metrics.jsonl") as f:
    assert json.loads(f.readlines()[-1])["step"] == 3


def test_dit_encodes_on_the_fly_with_source_vae(chain, tmp_path):
  root, _, _ = chain
  config = faces_latent.get_config(
      f"runlocal,vae={root / 'vae'},source=encode,steps=2")
  config = _with(config, **{"data.data_dir": str(root / "pixels")})
  state = train.train_and_evaluate(config, str(tmp_path / "dit"), jax.devices()[:1])
  assert int(state.step) == 2


def test_latent_config_errors_name_the_fix(chain, tmp_path):
  root, _, _ = chain
  config = faces_latent.get_config(f"runlocal,vae={root / 'vae'},cache={tmp_path / 'none'}")
  with pytest.raises(FileNotFoundError, match="tools.encode_latents"):
    train.train_and_evaluate(config, str(tmp_path / "w"), jax.devices()[:1])
  config = faces_latent.get_config(f"runlocal,vae={root / 'vae'},cache={root / 'cache'}")
  config = _with(config, **{"latent.shape": (3, 4, 4, 4)})
  with pytest.raises(ValueError, match="latent.shape"):
    train.validate(config)
  config = faces_latent.get_config(f"runlocal,vae={tmp_path / 'novae'}")
  with pytest.raises(FileNotFoundError, match="checkpoints"):
    train.validate(config)


def test_vae_psnr_command_matches_the_library(chain, tmp_path):
  root, _, _ = chain
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  clip = (np.random.default_rng(0).uniform(0, 255, (5, 32, 48, 3))).astype(np.uint8)
  video_io.write_video(str(tmp_path / "clip.mp4"), clip, fps=8)
  run = lambda *a: subprocess.run([sys.executable, "-m", "tools.vae_psnr",
                                   f"--vae_workdir={root / 'vae'}", *a], cwd=repo,
                                  capture_output=True, text=True, timeout=300)
  r = run(f"--data_dir={root / 'pixels'}", "--num_clips=4", f"--video={tmp_path / 'clip.mp4'}",
          "--frames=5")
  assert r.returncode == 0, r.stderr[-2000:]
  dataset, video = (json.loads(line) for line in r.stdout.strip().splitlines())
  codec = workdir.LatentCodec(str(root / "vae"))
  want = latents.dataset_psnr(codec, str(root / "pixels"), 4)
  assert dataset["clips"] == 4 and dataset["step"] == 10
  assert dataset["psnr_db"] == pytest.approx(want["psnr_db"], abs=1e-4)
  assert video["shape"] == [5, 32, 48, 3]
  assert video["psnr_db"] == pytest.approx(
      latents.video_psnr(codec, str(tmp_path / "clip.mp4"), 5)["psnr_db"], abs=1e-4)
  r = run()
  assert r.returncode != 0 and "--data_dir and/or --video" in r.stderr
