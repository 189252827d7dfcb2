"""Long videos and image-to-video: does the person stay the person beyond the training
length? (``experiments.evaluate --long=N``, a frame-conditioned model.)

Three ways to make a video N clips long from the same held-out examples and seed (the
first window is the same clip in all three, the plain text-to-video sample):

  extend        (a) sliding windows, each given the last frames made, the reference face
                    conditioning every window (``long_video``)
  identity_off  (b) the same, identity dropped after the first window: only the frames
                    carry the person on
  independent   (c) independent clips of the same prompt and face, back to back
  joint         (d) the whole video denoised at once as overlapping windows whose
                    predictions are averaged where they overlap (``long_video.co_denoise``;
                    no frame conditioning used; not causal, so its 2x prefix is a part of
                    the Nx video, not a 2x video of its own)
  joint_identity_off (e) the same, the windows after the first given the model's null
                    identity

Per frame: the identity probe's cosine to the reference (and to another identity's
reference: the gap), and the mean absolute change from the previous frame. Summaries at
2x, 4x ... Nx the training length (the sampler is causal: the 2x video is the first
quarter of the 8x one): the end window's similarity over the first window's (with a
bootstrap CI), the slope (similarity lost per generated second), and the seam ratio
(the median frame change across window boundaries over the median change inside windows).

Image-to-video: each example's real first frame as the still: the first frame's PSNR to
it, and the action probe's accuracy beside text-to-video's on the same examples.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from video_dit import conditions, long_video, pca_codec, sampling, sharding, video_io
from video_dit import workdir as workdir_lib
from video_dit.evaluation import evaluate as eval_lib
from video_dit.evaluation import probes as probes_lib
from video_dit.models import registry

VARIANTS = {
    "extend": "(a) extends itself, identity in every window",
    "identity_off": "(b) identity off after the first window",
    "independent": "(c) independent clips concatenated",
    "joint": "(d) co-denoised overlapping windows, identity in every window",
    "joint_identity_off": "(e) co-denoised windows, identity off after the first window",
}
PSNR_CAP = 100.0  # dB: identical frames


def window_sampler(config, built, params, n: int, total: int = 0, stride: int = 0,
                   identity_after_first: bool = True):
  """``(cond, key) -> (n, *clip shape)`` host video: one clip per example, over the mesh
  (the batch padded to the mesh's data size). With ``total``: videos of ``total`` frames,
  co-denoised windows every ``stride`` frames (``long_video.co_denoise``)."""
  mesh = sharding.make_mesh(config.mesh)
  params = sharding.replicate(params, mesh)
  size = mesh.shape["data"] * mesh.shape["fsdp"]
  padded = -(-n // size) * size
  shape, windows = built.shape, None
  if total:
    shape = (total,) + tuple(built.shape[1:])
    windows = (built.shape[0], stride, True, identity_after_first)
  sample = sampling.make_sampler(built.model, built.diffusion, built.sampler,
                                 (padded,) + shape, windows=windows)

  def fn(cond, key, noise=None):
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], padded - n, 0)]) if padded > n else x
    cond = jax.tree.map(lambda x: pad(np.asarray(x)), cond)
    with jax.set_mesh(mesh):
      if noise is not None:
        noise = sharding.shard_copies(pad(np.asarray(noise)), mesh)
      return sharding.to_host(sample(params, sharding.shard_copies(cond, mesh), key,
                                     noise))[:n]
  return fn


def boundaries(windows, per_frame: int, total: int) -> np.ndarray:
  """Pixel frame indices where a window's first new frame follows the frame before it
  (made by another window): the transitions a seam would show in."""
  firsts = [(w.start + w.given) * per_frame for w in windows[1:]]
  return np.asarray([f for f in firsts if 0 < f < total], np.int64)


def psnr(a_uint8, b_uint8) -> np.ndarray:
  """Per-image PSNR in dB (``PSNR_CAP`` for identical images)."""
  return np.minimum(pca_codec.psnr(video_io.to_unit(a_uint8), video_io.to_unit(b_uint8)),
                    PSNR_CAP)


def _ci(values) -> list[float]:
  v = np.asarray(values, np.float64)
  half = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
  return [float(v.mean() - half), float(v.mean() + half)]


def _bootstrap_ratio(num, den, seed: int = 0, rounds: int = 2000) -> dict:
  """mean(num) / mean(den) over videos, with a percentile bootstrap 95% CI."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  idx = np.random.default_rng(seed).integers(0, len(num), (rounds, len(num)))
  draws = num[idx].mean(1) / den[idx].mean(1)
  return dict(ratio=float(num.mean() / den.mean()),
              ci95=[float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))])


def summarise(matched, mismatched, change, cuts, window: int, fps: float,
              factors, tubelet_frames: int = 1) -> dict:
  """Per factor f (a prefix of f clips): first and end window similarity, their ratio,
  the gap at the end, the slope over the whole prefix and the seam ratios: the median change
  across window boundaries over the median change of every transition inside windows
  (``seam_ratio``), and over the median change inside windows from one tubelet to the
  next (``seam_ratio_tubelet``: like for like, a boundary is always between tubelets, and
  a DiT's frames change more there than within a tubelet).

  Args:
    matched / mismatched: (n, T) per-frame cosine to the own / another's reference.
    change: (n, T - 1) mean |frame t+1 - frame t| in [0, 1].
    cuts: pixel frames where a new window's first frame begins (``boundaries``).
  """
  out = {}
  for f in factors:
    length = f * window
    m, mm = matched[:, :length], mismatched[:, :length]
    first, end = m[:, :window].mean(1), m[:, length - window:length].mean(1)
    seconds = np.arange(length) / fps
    slopes = np.polyfit(seconds, m.T, 1)[0]  # per video
    inside = np.ones(length - 1, bool)
    cut = cuts[cuts < length]
    inside[cut - 1] = False
    # The same statistic on both sides of the ratio: generated videos differ in how
    # much they move (a skewed spread), so a mean over a median reads ~2x without a seam.
    at_cut = float(np.median(change[:, cut - 1])) if len(cut) else float("nan")
    median_inside = float(np.median(change[:, :length - 1][:, inside]))
    between = inside & (np.arange(1, length) % tubelet_frames == 0)
    median_between = float(np.median(change[:, :length - 1][:, between])) if between.any() \
        else float("nan")
    end_gap = end - mm[:, length - window:length].mean(1)
    out[f"{f}x"] = dict(
        frames=length, first_window=float(first.mean()), end_window=float(end.mean()),
        end_over_first=_bootstrap_ratio(end, first), end_gap=float(end_gap.mean()),
        end_gap_ci95=_ci(end_gap), slope_per_second=float(slopes.mean()),
        slope_ci95=_ci(slopes), seam_ratio=float(at_cut / median_inside) if len(cut) else None,
        seam_ratio_tubelet=float(at_cut / median_between) if len(cut) else None,
        change_at_boundaries=float(at_cut) if len(cut) else None,
        mean_change_at_boundaries=float(change[:, cut - 1].mean()) if len(cut) else None,
        median_change_inside=median_inside, median_change_between_tubelets=median_between)
  return out


def evaluate_long(workdir: str, *, factor: int = 8, step: int | None = None,
                  split: str = "test", num_videos: int = 32, ema: bool = True,
                  sampler: dict | None = None, overlap: int = 0,
                  probe_dir: str | None = None, train_probes: bool = True,
                  window_noise: str = "fresh", log=print) -> dict:
  """The five long-video variants and image-to-video on the split's first examples;
  writes ``W/eval/long{factor}x_<settings>.json`` and its media folder. ``window_noise``:
  ``long_video.sample``'s ``noise`` ('fresh' or 'reuse')."""
  if window_noise not in ("fresh", "reuse"):
    raise ValueError(f"--window_noise={window_noise} is not 'fresh' or 'reuse'")
  if factor < 2 or factor & (factor - 1):
    raise ValueError(f"--long={factor} must be a power of two >= 2 (videos of 2x, 4x ... "
                     "that many clips)")
  restored = workdir_lib.load(workdir, step, ema)
  config, params, step = restored.config, restored.params, restored.step
  config.sample.update({k: v for k, v in (sampler or {}).items() if v is not None})
  if config.data.dataset != "synthetic_faces":
    raise ValueError("--long measures identity with the synthetic identity probe: evaluate "
                     "a model of the synthetic_faces dataset")
  built = registry.build_dit(config)
  long_video.check_model(built.cfg, "--long")
  frames = long_video.Frames.of(config, [], factor * config.data.frames, overlap)
  per_frame, window = frames.per_frame, built.shape[0]
  total = factor * window
  batch = eval_lib.load_examples(config, split, num_videos)
  n = len(batch["video"])
  real, faces = video_io.to_uint8(batch["video"]), video_io.to_uint8(batch["face"])
  identities, actions = eval_lib.identity_ids(batch), np.asarray(batch["action"])
  _, cond = conditions.split_batch(batch)
  off = {k: v for k, v in cond.items() if k not in conditions.FACE_FIELDS}
  fn = window_sampler(config, built, params, n)
  codec = workdir_lib.codec(config)
  decode = lambda v: video_io.to_uint8(codec.decode(v) if codec is not None else v)
  key = jax.random.key(config.seed)
  probe_path = lambda kind: probe_dir and os.path.join(probe_dir, kind)
  probe = probes_lib.load_or_train(config, "identity", probe_path("identity"),
                                   train=train_probes, log=log)
  action = probes_lib.load_or_train(config, "action", probe_path("action"),
                                    train=train_probes, log=log)  # both before sampling
  log(f"long videos: {n} '{split}' examples, {factor} x {window * per_frame} frames, "
      f"overlap {frames.overlap * per_frame}")
  videos, plans = {}, {}
  for name, kw in (("extend", {}), ("identity_off", dict(later_cond=off)),
                   ("independent", dict(independent=True))):
    progress = lambda i, w, name=name: log(f"  {name}: window {i + 1} ready")
    videos[name] = decode(long_video.sample(fn, cond, key, total, built.shape, frames.overlap,
                                            frames.tubelet, on_window=progress,
                                            value_range=frames.value_range,
                                            noise="fresh" if name == "independent"
                                            else window_noise, **kw))
    plans[name] = long_video.plan(total, window, frames.overlap, 0, frames.tubelet,
                                  independent=bool(kw.get("independent")))
  for name, on in (("joint", True), ("joint_identity_off", False)):
    log(f"  {name}: co-denoising the whole video")
    joint = window_sampler(config, built, params, n, total, window - frames.overlap, on)
    video = joint(cond, key)
    videos[name] = decode(np.clip(video, *frames.value_range) if frames.value_range else video)
    plans[name] = plans["extend"]  # its seams would show where (a)'s windows meet

  ref = probe.embed_images(faces)
  other = eval_lib.mismatched_index(identities)
  fps = float(config.sample.get("fps", 8.0))
  factors = [2 ** k for k in range(1, int(np.log2(factor)) + 1)]
  results = dict(step=step, workdir=os.path.abspath(workdir), split=split, num_videos=n,
                 factor=factor, clip_frames=window * per_frame, window_noise=window_noise,
                 overlap_frames=frames.overlap * per_frame, fps=fps,
                 params=("ema" if ema else "raw"), params_digest=restored.digest,
                 sampler=dataclasses.asdict(built.sampler),
                 identity_probe=dict(probe.scores), variants={})
  if not probe.verified:
    results["warning"] = (f"the identity probe reaches ROC AUC {probe.scores['roc_auc']:.3f} "
                          f"on held-out identities, below {probes_lib.MIN_AUC}: its "
                          "similarities are a weak ruler (train it on more identities)")
    log(results["warning"])
  for name, video in videos.items():
    emb = probe.embed_frames(video)
    matched = np.einsum("nte,ne->nt", emb, ref)
    mismatched = np.einsum("nte,ne->nt", emb, ref[other])
    change = np.abs(np.diff(video.astype(np.float64) / 255.0, axis=1)).mean((2, 3, 4))
    cuts = boundaries(plans[name], per_frame, total * per_frame)
    results["variants"][name] = dict(
        label=VARIANTS[name], per_frame=matched.mean(0).tolist(),
        per_frame_ci95=(1.96 * matched.std(0, ddof=1) / np.sqrt(n)).tolist(),
        per_frame_gap=(matched - mismatched).mean(0).tolist(),
        frame_change=change.mean(0).tolist(), boundaries=cuts.tolist(),
        summary=summarise(matched, mismatched, change, cuts, window * per_frame, fps,
                          factors, per_frame * frames.tubelet))
  results["real_median_frame_change"] = float(np.median(
      np.abs(np.diff(real.astype(np.float64) / 255.0, axis=1)).mean((2, 3, 4))))
  results["image_to_video"] = image_to_video(config, frames, fn, cond, key, real, actions,
                                             videos["extend"][:, :window * per_frame],
                                             codec, decode, action, log, window_noise)
  results["name"] = (f"long{factor}x_" + eval_lib.run_name(step, built.sampler, split, n, ema)
                     + f"_overlap{frames.overlap * per_frame}"
                     + ("_reuse" if window_noise == "reuse" else ""))
  i2v = results["image_to_video"].pop("videos")
  if jax.process_index() == 0:
    write(workdir, results, videos, faces, i2v)
  return results


def image_to_video(config, frames, fn, cond, key, real, actions, text_to_video, codec, decode,
                   action, log, window_noise: str = "fresh") -> dict:
  """Each example's first real frame as the still (held over the first tubelet), the
  example's prompt and face; the same noise as the text-to-video clip."""
  stills = real[:, 0]
  tubelet_frames = frames.per_frame * frames.tubelet
  given = long_video.still_frames(config, codec, stills)
  shape = registry.video_shape(config)
  video = decode(long_video.sample(fn, cond, key, shape[0], shape, frames.overlap,
                                   frames.tubelet, given, noise=window_noise))
  first = psnr(video[:, 0], stills)
  after = psnr(video[:, tubelet_frames], stills)
  hit = lambda v: (action.action_logits(v).argmax(-1) == actions).astype(np.float64)
  i2v, t2v = hit(video), hit(text_to_video)
  log(f"image-to-video: first frame PSNR {first.mean():.1f} dB, action {i2v.mean():.1%} "
      f"(text-to-video {t2v.mean():.1%})")
  return dict(first_frame_psnr_db=float(first.mean()), first_frame_psnr_min_db=float(first.min()),
              first_generated_frame_psnr_db=float(after.mean()),
              given_frames=int(tubelet_frames),
              action_accuracy=float(i2v.mean()), action_ci95=_ci(i2v),
              text_to_video_action_accuracy=float(t2v.mean()), text_to_video_action_ci95=_ci(t2v),
              action_difference_ci95=_ci(i2v - t2v), n=int(len(i2v)), videos=video)


def write(workdir: str, results: dict, videos: dict, faces, i2v) -> None:
  """``W/eval/NAME.json``, then ``W/eval/NAME/`` (videos.npz, the plots, GIFs of the first
  examples with the variants side by side)."""
  from video_dit.evaluation import long_report  # pylint: disable=g-import-not-at-top
  media = os.path.join(workdir, "eval", results["name"])
  os.makedirs(media, exist_ok=True)
  tmp = os.path.join(media, f"videos.tmp{os.getpid()}.npz")
  np.savez_compressed(tmp, faces=faces, image_to_video=i2v, **videos)
  os.replace(tmp, os.path.join(media, "videos.npz"))
  results["media"] = os.path.abspath(media)
  results["path"] = os.path.abspath(os.path.join(workdir, "eval", results["name"] + ".json"))
  tmp = f"{results['path']}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, results["path"])
  long_report.draw(results, videos, faces, i2v, media)
