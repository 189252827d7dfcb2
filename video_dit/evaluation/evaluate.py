"""Evaluation of a checkpoint on held-out identities: every metric the field reports.

``evaluate(workdir, ...)`` takes the first ``num_videos`` examples of a split
(references and prompts of identities the model never saw when the split is
``test``), samples one video per example, and scores:

* ``fvd``: generated vs the real clips of the same examples (I3D, ``[eval]``).
* ``identity``: similarity of each generated video to its own reference
  (matched) and to the reference of another identity in the set (mismatched),
  the paired gap with a 95% confidence interval and how often matched wins.
  Synthetic data: the identity probe (``probes``), reported only when it
  verified held-out identities with ROC AUC >= ``probes.MIN_AUC``. Real data:
  dlib's face recognizer, frames without a face counted (``[eval]``).
  The same numbers on the real clips are given as the ceiling. For a DiT on a codec's
  latents, the real clips through that codec (encoded, decoded) are scored too
  (``codec``): the most a perfect latent model could show.
* ``text``: accuracy of the prompted action by the action probe (synthetic
  data), beside chance and the probe's accuracy on the real clips (and through the codec).
* ``temporal``: embedding variance, frame change, drift and token-grid seams (generated,
  real, and real through the codec).
* ``cost``: FLOPs and seconds per sample and per generated video-second.
* ``denoise``: the one-step x0 error on the real clips per noise level, against the best
  linear denoiser's (``denoise.py``): above 1x the network is worse than that there.
* ``usable`` (with ``identity``): the fraction of usable samples and the cost per usable
  video-second; ``best_of=N`` keeps the best of N candidates by identity (``usable.py``).

A metric whose parts are missing is skipped with the reason, never faked.
Writes ``W/eval/NAME.json`` (atomically; NAME = ``run_name``: the step, the examples
and every sampler setting), TensorBoard scalars under ``eval/``, and ``W/eval/NAME/``
with the videos (``videos.npz``) and a GIF + PNG strip for the first few. On the
synthetic data ``identity`` also holds the per-frame similarity curve (drift).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from video_dit import conditions, sampling, sharding, video_io
from video_dit import metrics as metrics_lib
from video_dit import workdir as workdir_lib
from video_dit.data import builders, pipeline, synthetic
from video_dit.evaluation import cost as cost_lib
from video_dit.evaluation import denoise
from video_dit.evaluation import probes as probes_lib
from video_dit.evaluation import temporal
from video_dit.evaluation import usable as usable_lib
from video_dit.evaluation.naming import run_name
from video_dit.models import registry

METRICS = ("fvd", "identity", "text", "temporal", "cost", "denoise")


def paired_gap(matched: np.ndarray, mismatched: np.ndarray) -> dict:
  """Mean matched - mismatched with a normal 95% CI, and the two-alternative choice rate."""
  m, w = np.asarray(matched, np.float64), np.asarray(mismatched, np.float64)
  d = m - w
  half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("inf")
  return dict(matched=float(m.mean()), mismatched=float(w.mean()), gap=float(d.mean()),
              gap_ci95=[float(d.mean() - half), float(d.mean() + half)],
              choice_accuracy=float(np.mean(d > 0)), n=int(len(d)))


def per_frame_similarity(frames_nte: np.ndarray, ref_ne: np.ndarray, other: np.ndarray) -> dict:
  """Identity drift over the clip: per frame index, the mean cosine of the frame to its
  own reference and to another identity's (unit embeddings), with 95% CIs."""
  out = {}
  for key, refs in (("matched", ref_ne), ("mismatched", ref_ne[other])):
    cos = np.einsum("nte,ne->nt", frames_nte, refs).astype(np.float64)
    half = 1.96 * cos.std(0, ddof=1) / np.sqrt(len(cos)) if len(cos) > 1 else 0 * cos[0]
    out[key] = cos.mean(0).tolist()
    out[f"{key}_ci95"] = half.tolist()
  return out


def per_attribute(probe, gen, real, identities, seed: int) -> dict:
  """Which attributes of the reference identity the videos show: per attribute, how
  often the probe reads the identity's true value from a generated clip (with a 95%
  CI) beside chance and the same on the real clips."""
  truth = np.asarray([[synthetic.identity_attributes(seed, int(i))[k]
                       for k in synthetic.ATTRIBUTES] for i in identities])
  read = {name: probe.clip_attributes(v) for name, v in (("generated", gen), ("real", real))}
  out = {}
  for a, (name, size) in enumerate(synthetic.ATTRIBUTES.items()):
    hit = read["generated"][:, a] == truth[:, a]
    p, n = float(hit.mean()), len(hit)
    half = 1.96 * np.sqrt(max(p * (1 - p), 1e-12) / n)
    out[name] = dict(accuracy=p, ci95=[p - half, p + half], chance=1.0 / size,
                     real_accuracy=float(np.mean(read["real"][:, a] == truth[:, a])), n=n)
  return out


def mismatched_index(identities: np.ndarray) -> np.ndarray:
  """For each example, the nearest later example (cyclically) of another identity."""
  n = len(identities)
  out = np.empty(n, np.int64)
  for i in range(n):
    for k in range(1, n):
      j = (i + k) % n
      if identities[j] != identities[i]:
        out[i] = j
        break
    else:
      raise ValueError("the identity metric needs examples of at least 2 identities; "
                       "raise --num_videos")
  return out


def load_examples(config, split: str, num_videos: int) -> dict:
  """The first ``num_videos`` examples of ``split`` as the eval pipeline decodes them."""
  c = config.copy_and_resolve_references()
  if "latent" in c:  # real clips in pixels: a latent cache carries its source frames
    c.latent.source = "pixels"
  source = builders.data_source(c.data.data_dir, split)
  n = min(num_videos, len(source))
  if n < 2:
    raise ValueError(f"split '{split}' of {c.data.data_dir} has {len(source)} examples; "
                     "evaluation needs at least 2")
  c.data.batch_size = n
  batch = jax.tree.map(np.asarray, next(iter(pipeline.make_dataset(
      c, split, train=False, process_index=0, process_count=1, source=source))))
  text = lambda x: x.decode() if isinstance(x, bytes) else str(x)
  batch["caption"] = [text(source[i]["caption"]) for i in range(n)]
  batch["identity_name"] = [text(source[i]["identity"]) for i in range(n)]
  return batch


def identity_ids(batch: dict) -> np.ndarray:
  """Each example's identity as an integer: the synthetic identity index, or (real data,
  whose records store index -1) the record's identity name."""
  index = np.asarray(batch["identity_index"])
  if (index >= 0).all():
    return index
  return np.unique(np.asarray(batch["identity_name"]), return_inverse=True)[1].reshape(-1)


def generate_videos(config, model, params, diffusion, sampler, batch: dict, seed: int,
                    chunk: int, candidates: int = 1) -> np.ndarray:
  """uint8 videos (candidates, n, T, H, W, C): ``candidates`` per example, sampled
  ``chunk`` at a time over the mesh (every process holds every example and gets every
  video back). Candidate 0 is the same video for any number of candidates, and an
  example's starting noise depends on its index, not on the chunk (a stochastic
  sampler's later noise still does)."""
  mesh = sharding.make_mesh(config.mesh)
  params = sharding.replicate(params, mesh)
  chunk = chunk_on_mesh(mesh, chunk)
  n = len(batch["video"])
  shape = (chunk,) + registry.video_shape(config)
  sample = sampling.make_sampler(model, diffusion, sampler, shape)
  codec = workdir_lib.codec(config)
  _, cond = conditions.split_batch(batch)
  progress = metrics_lib.Progress(n * candidates)
  out = []
  with jax.set_mesh(mesh):
    for c, i in itertools.product(range(candidates), range(0, n, chunk)):
      key = jax.random.key(seed)  # candidate 0; others from their own stream
      key = jax.random.fold_in(jax.random.fold_in(key, _CANDIDATES_STREAM), c) if c else key
      part = jax.tree.map(lambda x: x[i:i + chunk], cond)
      pad = chunk - len(jax.tree.leaves(part)[0])
      if pad:  # the last chunk repeats its last example: one compiled shape
        part = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], pad, 0)]), part)
      noise = example_noise(key, i, chunk, tuple(shape[1:]))
      steps_key = jax.random.fold_in(jax.random.fold_in(key, _STEPS_STREAM), i // chunk)
      video = sharding.to_host(sample(params, sharding.shard_copies(part, mesh), steps_key,
                                      sharding.shard_copies(noise, mesh)))
      if codec is not None:  # a latent-space DiT: decode with its codec
        video = codec.decode(video)
      out.append(video_io.to_uint8(video)[:chunk - pad])
      progress.update(c * n + min(i + chunk, n), "videos sampled", force=True)
  progress.close()
  return np.concatenate(out).reshape((candidates, n) + out[0].shape[1:])


# Keys apart from example_noise's fold_in(key, example index): a stochastic sampler's step
# noise, and candidates after the first.
_STEPS_STREAM, _CANDIDATES_STREAM = 2**31 - 1, 2**31 - 2


def chunk_on_mesh(mesh, chunk: int) -> int:
  """Videos per sampler call: ``chunk`` rounded down to whole batches of the mesh's
  data-parallel size (at least one)."""
  data_size = mesh.shape["data"] * mesh.shape["fsdp"]
  return max(data_size, chunk // data_size * data_size)


@functools.partial(jax.jit, static_argnames=("count", "shape"))
def example_noise(key, first, count: int, shape: tuple[int, ...]) -> jnp.ndarray:
  """(count, *shape) float32 starting noise of examples first .. first + count - 1, each
  drawn from ``key`` folded with its own index."""
  draw = lambda j: jax.random.normal(jax.random.fold_in(key, j), shape, jnp.float32)
  return jax.vmap(draw)(first + jnp.arange(count))


# ----------------------------------------------------------------------------- metrics


def through_codec(codec, videos, chunk: int) -> np.ndarray:
  """Clips in [-1, 1] encoded and decoded by a latent DiT's codec, ``chunk`` at a time,
  as uint8: what its latents keep of them."""
  return np.concatenate([video_io.to_uint8(codec.decode(codec.encode(videos[i:i + chunk])))
                         for i in range(0, len(videos), chunk)])


def identity_metrics(config, gen, real, faces, identities, probe_path, train_probes, log,
                     coded=None):
  """(metrics, per-frame embeddings by name or None): ``generated``, ``real`` and, given
  ``coded`` (the real clips through the DiT's codec), ``codec``."""
  other = mismatched_index(identities)
  clips = {"generated": gen, "real": real}
  if coded is not None:
    clips["codec"] = coded
  out, embeds = _identity_metrics(config, clips, faces, identities, other, probe_path,
                                  train_probes, log)
  return dict(out, identities=int(len(np.unique(identities)))), embeds


def _identity_metrics(config, clips, faces, identities, other, probe_path, train_probes, log):
  if config.data.dataset == "synthetic_faces":
    probe = probes_lib.load_or_train(config, "identity", probe_path, train=train_probes, log=log)
    verification = dict(probe.scores)
    if not probe.verified:
      return dict(skipped=(f"the identity probe reaches ROC AUC {probe.scores['roc_auc']:.3f} "
                           f"on held-out identities, below {probes_lib.MIN_AUC}; its "
                           "similarities are not reported (train it on more identities)"),
                  probe=verification), None
    ref = probe.embed_images(faces)
    out = dict(embedding="identity probe (cosine of attribute probabilities)",
               probe=verification,
               per_attribute=per_attribute(probe, clips["generated"], clips["real"], identities,
                                           config.seed))
    embeds = {}
    for name, videos in clips.items():
      frames = probe.embed_frames(videos)
      clip = frames.mean(1)
      clip /= np.linalg.norm(clip, axis=-1, keepdims=True)
      matched, mismatched = np.sum(clip * ref, -1), np.sum(clip * ref[other], -1)
      out[name] = dict(paired_gap(matched, mismatched),
                       per_frame=per_frame_similarity(frames, ref, other),
                       per_video_matched=matched.tolist(),
                       per_video_mismatched=mismatched.tolist())
      embeds[name] = frames
    return out, embeds
  from video_dit.evaluation import face_id  # pylint: disable=g-import-not-at-top
  out = dict(embedding="dlib 128-d face recognizer (mean cosine over frames with a face)")
  embeds = {}
  refs = [face_id.embed_face(f) for f in faces]
  for name, videos in clips.items():
    matched, mismatched, missing, kept = [], [], 0, []
    per_video = [None] * len(videos)  # None: no face in the video or its reference
    per_video_other = [None] * len(videos)
    for i, video in enumerate(videos):
      found, without = face_id.embed_frames(video)
      missing += without
      if refs[i] is None or not len(found):
        continue
      per_video[i] = face_id.similarity(found, refs[i])["cosine"]
      if refs[other[i]] is None:
        continue
      matched.append(per_video[i])
      per_video_other[i] = face_id.similarity(found, refs[other[i]])["cosine"]
      mismatched.append(per_video_other[i])
      kept.append(found)
    out[name] = dict(paired_gap(np.asarray(matched), np.asarray(mismatched)) if matched else
                     dict(skipped="no video had a detected face"),
                     frames_without_face=missing, frames=int(videos.shape[0] * videos.shape[1]),
                     references_without_face=sum(r is None for r in refs),
                     per_video_matched=per_video, per_video_mismatched=per_video_other)
    embeds[name] = kept
  return out, embeds


def text_metrics(config, gen, real, actions, probe_path, train_probes, log, coded=None):
  if config.data.dataset != "synthetic_faces":
    return dict(skipped="text alignment needs action labels: only the synthetic dataset has "
                        "an action probe")
  probe = probes_lib.load_or_train(config, "action", probe_path, train=train_probes, log=log)
  gen_pred = probe.action_logits(gen).argmax(-1)
  real_pred = probe.action_logits(real).argmax(-1)
  counts = np.bincount(actions, minlength=probes_lib.NUM_ACTIONS)
  codec = {}
  if coded is not None:  # the real clips through the DiT's codec
    codec_pred = probe.action_logits(coded).argmax(-1)
    codec = dict(codec_accuracy=float(np.mean(codec_pred == actions)),
                 codec_predicted=codec_pred.tolist())
  return dict(accuracy=float(np.mean(gen_pred == actions)),
              real_accuracy=float(np.mean(real_pred == actions)),
              chance=1.0 / probes_lib.NUM_ACTIONS,
              majority_baseline=float(counts.max() / counts.sum()),
              probe=dict(probe.scores), n=int(len(actions)),
              predicted_counts=np.bincount(gen_pred, minlength=probes_lib.NUM_ACTIONS).tolist(),
              actions=list(synthetic.ACTION_NAMES), predicted=gen_pred.tolist(),
              real_predicted=real_pred.tolist(), **codec)


# ----------------------------------------------------------------------------- driver


def evaluate(workdir: str, *, step: int | None = None, split: str = "test",
             num_videos: int = 64, ema: bool = True, sampler: dict | None = None,
             metrics: tuple[str, ...] = METRICS, probe_dir: str | None = None,
             train_probes: bool = True, chunk: int = 8, num_gifs: int = 8,
             best_of: int = 1, log=print) -> dict:
  """Samples the split's first examples from ``workdir``'s checkpoint and scores them
  (the best of ``best_of`` candidates per example by identity, see ``usable.best_of``)."""
  if best_of < 1:
    raise ValueError(f"--best_of={best_of} must be >= 1 (candidates sampled per example)")
  if num_videos < 2:
    raise ValueError(f"--num_videos={num_videos} must be >= 2 (the identity gap pairs videos "
                     "of different identities)")
  unknown = set(metrics) - set(METRICS)
  if unknown:
    raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
  restored = workdir_lib.load(workdir, step, ema)
  config, params, step = restored.config, restored.params, restored.step
  config.sample.update({k: v for k, v in (sampler or {}).items() if v is not None})
  dit = registry.build_dit(config)
  model, diffusion, sampler_cfg = dit.model, dit.diffusion, dit.sampler
  batch = load_examples(config, split, num_videos)
  real, faces = video_io.to_uint8(batch["video"]), video_io.to_uint8(batch["face"])
  identities, actions = identity_ids(batch), batch["action"]
  log(f"evaluating step {step} of {workdir} on {len(real)} '{split}' examples "
      f"({len(np.unique(identities))} identities)")
  timings = {}
  t0 = time.time()
  gen = generate_videos(config, model, params, diffusion, sampler_cfg, batch, config.seed,
                        chunk, best_of)
  timings["sample_s"] = time.time() - t0
  codec = workdir_lib.codec(config)
  coded = None
  if codec is not None and {"identity", "text", "temporal"} & set(metrics):
    t0 = time.time()  # a latent DiT's ceiling: what its codec keeps of the real clips
    coded = through_codec(codec, batch["video"], chunk)
    timings["codec_s"] = time.time() - t0

  results = dict(step=step, workdir=os.path.abspath(workdir), split=split,
                 num_videos=int(gen.shape[1]), params=("ema" if ema else "raw"),
                 params_digest=restored.digest, sampler=dataclasses.asdict(sampler_cfg),
                 probe_dir=os.path.abspath(probe_dir) if probe_dir else None,
                 noise=noise_scheme(sampler_cfg,
                                    chunk_on_mesh(sharding.make_mesh(config.mesh), chunk)))
  path = lambda kind: (os.path.join(probe_dir, kind) if probe_dir else None)
  if best_of > 1:  # keep each example's candidate most like its reference
    gen, results["best_of"] = usable_lib.best_of(config, gen, faces, probe_dir, train_probes,
                                                 log)
  else:
    gen = gen[0]
  embeds = None

  def run(name, fn):
    nonlocal embeds
    if name not in metrics:
      return
    t = time.time()
    try:
      value = fn()
    except ImportError as e:
      value = dict(skipped=f"{e}")
    if name == "identity":
      value, embeds = value
    results[name] = value
    timings[f"{name}_s"] = time.time() - t
    log(f"{name}: {_summary(value)}")

  def fvd_fn():
    from video_dit.evaluation import fvd  # pylint: disable=g-import-not-at-top
    return fvd.fvd(real, gen)

  def cost_fn():
    one = jax.tree.map(lambda x: x[:1], conditions.split_batch(batch)[1])
    return cost_lib.sampler_cost(model, params, diffusion, sampler_cfg, one,
                                 (1,) + registry.video_shape(config),
                                 float(config.sample.get("fps", 8.0)),
                                 pixel_frames=config.data.frames,
                                 codec=workdir_lib.codec(config))

  run("fvd", fvd_fn)
  run("identity", lambda: identity_metrics(config, gen, real, faces, identities, path("identity"),
                                           train_probes, log, coded))
  run("text", lambda: text_metrics(config, gen, real, actions, path("action"), train_probes, log,
                                   coded))
  tubelet = registry.pixel_tubelet(config)
  clips = (("generated", gen), ("real", real)) + ((("codec", coded),) if coded is not None
                                                  else ())
  run("temporal", lambda: {name: temporal.summary(v, (embeds or {}).get(name), tubelet)
                           for name, v in clips})
  run("cost", lambda: usable_lib.count_candidates(cost_fn(), best_of))
  run("denoise", lambda: denoise_fn(config, model, params, diffusion, batch))
  results["name"] = run_name(step, sampler_cfg, split, len(gen), ema, best_of)
  # Same checkpoint, sampler, seed and examples: the same videos, so an earlier run's
  # other metrics still hold; kept before 'usable' is derived from them.
  _keep_earlier_metrics(results, os.path.join(workdir, "eval", results["name"] + ".json"))
  block = usable_lib.usable_block(results, config.data.dataset == "synthetic_faces", actions)
  if block is not None:
    results["usable"] = block
    log(f"usable: {_summary(block)}")
  results["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
  if jax.process_index() == 0:
    _write(workdir, step, results, gen, real, faces, batch["caption"], identities, actions,
           num_gifs, float(config.sample.get("fps", 8.0)))
  return results


def denoise_fn(config, model, params, diffusion, batch) -> dict:
  """The one-step denoising curve on the real clips (``evaluation/denoise.py``), in the
  model's space (a latent DiT's clips go through its codec)."""
  x0, cond = conditions.split_batch(batch)
  codec = workdir_lib.codec(config)
  if codec is not None:
    x0 = np.asarray(codec.encode(jnp.asarray(x0, jnp.float32)))
  return denoise.denoise_curve(model, params, diffusion, x0, cond, seed=config.seed)


def _summary(value: dict) -> str:
  if "skipped" in value:
    return "skipped: " + value["skipped"]
  if "ratio" in value:  # the denoising curve: error / the linear denoiser's, per level
    return denoise.summary(value)
  flat = scalars(value)
  return ", ".join(f"{k}={v:.4g}" for k, v in list(flat.items())[:6])


def scalars(tree: dict, prefix: str = "") -> dict[str, float]:
  """Flattens the numeric leaves of a result dict: {'identity/generated/gap': ...}."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(scalars(v, name + "/"))
    elif isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
      out[name] = float(v)
  return out


def _keep_earlier_metrics(results: dict, path: str) -> None:
  """A re-run of the same evaluation (``_SAME``: parameters, sampler, examples, probes,
  noise scheme; and candidates) that computed fewer metrics keeps the earlier run's other
  metrics instead of dropping them ('usable' is derived again from the merged ones)."""
  try:
    with open(path, encoding="utf-8") as f:
      earlier = json.load(f)
  except (OSError, ValueError):
    return
  now = json.loads(json.dumps({k: results.get(k) for k in _SAME}))  # tuples -> lists
  if all(earlier.get(k) == now[k] for k in _SAME) and _candidates(earlier) == _candidates(
      results):
    for name in METRICS:
      if name in earlier and name not in results:
        results[name] = earlier[name]


_SAME = ("step", "params_digest", "sampler", "num_videos", "split", "probe_dir", "noise")
# How starting noise is drawn: evaluations from before it was per example (their noise
# depended on the chunk) sampled other videos, so their metrics are not merged.
NOISE = "per_example"


def noise_scheme(sampler, chunk: int) -> str:
  """The videos' noise: per example, and for a sampler that draws noise at its steps
  (ddpm, DDIM with eta > 0) also the chunk, which that noise depends on."""
  stochastic = sampler.name == "ddpm" or (sampler.name == "ddim" and sampler.eta > 0)
  return f"{NOISE},chunk={chunk}" if stochastic else NOISE


def reusable(results: dict | None) -> bool:
  """Whether a saved evaluation sampled its videos the way this code does (an older one
  is evaluated again rather than reused or merged)."""
  return bool(results) and str(results.get("noise", "")).split(",")[0] == NOISE


def _candidates(results: dict) -> int:
  return int((results.get("best_of") or {}).get("n", 1))


def _write(workdir, step, results, gen, real, faces, captions, identities, actions, num_gifs,
           fps) -> None:
  out_dir = os.path.join(workdir, "eval")
  media = os.path.join(out_dir, results["name"])
  os.makedirs(media, exist_ok=True)
  tmp = os.path.join(media, f"videos.tmp{os.getpid()}.npz")
  np.savez_compressed(tmp, generated=gen, real=real, faces=faces, identity=identities,
                      action=actions, caption=np.asarray(captions, dtype=str))
  os.replace(tmp, os.path.join(media, "videos.npz"))
  for i in range(min(num_gifs, len(gen))):
    prefix = os.path.join(media, f"{i:03d}")
    video_io.write_gif(prefix + ".gif", gen[i], fps)
    video_io.write_gif(prefix + "_real.gif", real[i], fps)
    video_io.write_sample(prefix, gen[i], faces[i], fps)
  results["media"] = os.path.abspath(media)
  results["path"] = os.path.abspath(os.path.join(out_dir, results["name"] + ".json"))
  tmp = f"{results['path']}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, results["path"])
  writer = metrics_lib.MetricWriter(out_dir)
  writer.write(step, {f"eval/{k}": v for k, v in scalars(results).items()
                      if not k.startswith(("step", "timings"))})
  writer.close()
