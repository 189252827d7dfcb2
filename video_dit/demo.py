"""The face-upload demo's logic: a photo and a prompt in, a video of that person out.

``Demo(workdir)`` loads a training workdir once (``video_dit.workdir``) and serves
requests (``experiments/demo.py`` puts a gradio page in front of it):

* ``check_face(path)``: the detected and cropped face the model will see
  (``sampling.load_face``), or a ValueError that says what is wrong with the image;
* ``generate(...)``: refuses without the consent statement, samples ``candidates``
  videos (seeds ``seed``, ``seed + 1``, ...) and keeps the one most similar to the
  reference face (best-of-N), then writes its mp4 (provenance embedded), PNG strip,
  provenance json and a per-frame identity similarity plot, and returns them with the
  action the action probe reads and the cost of the sample.

One compiled sampler per (shape, sampler, steps) is reused by every request: the
guidance scales are arguments of the program, not constants in it. Requests run one
at a time (a lock; the page queues them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from video_dit import conditions, plots, sampling, video_io
from video_dit import workdir as workdir_lib
from video_dit.data import synthetic
from video_dit.evaluation import cost as cost_lib
from video_dit.evaluation import probes as probes_lib
from video_dit.models import registry

CONSENT = ("I am the person in this photo, or I have their permission, and I agree to an "
           "AI-generated video of them being made from it; the video is marked as "
           "AI-generated.")
MAX_STEPS = 200
MAX_CANDIDATES = 8


class Demo:
  """A workdir's checkpoint, loaded once, serving face + prompt -> video requests."""

  def __init__(self, workdir: str, step: int | None = None, ema: bool = True,
               out_dir: str | None = None, probe_dir: str | None = None, log=print,
               fast: bool = False):
    self.workdir = workdir
    self.restored = workdir_lib.load(workdir, step, ema)
    self.config = self.restored.config
    if fast:  # the page's defaults: the checkpoint's cheapest good sampler
      self.config.sample.update(sampling.fast_sampler(self.config))
    self.built = registry.build_dit(self.config)
    self.codec = workdir_lib.codec(self.config)
    self.face_size = int(self.config.identity.face_size)
    self.fps = float(self.config.sample.get("fps", 8.0))
    self.frames = int(self.config.data.frames)
    self.out_dir = out_dir or os.path.join(workdir, "demo")
    self.config_hash = sampling.config_hash(self.config)
    self.objective = self.built.diffusion.config.objective
    self._samplers: dict[tuple, tuple] = {}
    self._lock = threading.Lock()
    self._count = 0
    self.identity_probe, self.action_probe, self.probe_notes = self._load_probes(probe_dir)
    for note in self.probe_notes:
      log(f"[demo] {note}")

  @property
  def samplers(self) -> list[str]:
    from video_dit.diffusion import samplers  # pylint: disable=g-import-not-at-top
    return [s for s in samplers.SAMPLERS[self.objective]
            if (s == "shortcut") == self.built.cfg.step_embed or s == "euler"]

  @property
  def defaults(self) -> dict:
    s = self.built.sampler
    return dict(sampler=s.name, steps=s.num_steps, text_scale=s.text_scale,
                face_scale=s.id_scale)

  def _load_probes(self, probe_dir):
    """The synthetic data's identity and action probes, when they were trained (the
    quickstart trains them); the reasons when not."""
    if self.config.data.dataset != "synthetic_faces":
      return None, None, ["per-frame identity similarity and the action read need the "
                          "synthetic data's probes; this checkpoint is not synthetic"]
    out, notes = [], []
    for kind in ("identity", "action"):
      path = os.path.join(probe_dir, kind) if probe_dir else None
      try:
        out.append(probes_lib.load_or_train(self.config, kind, path, train=False))
      except (FileNotFoundError, ValueError) as e:
        out.append(None)
        notes.append(f"no {kind} probe: {e}")
    return out[0], out[1], notes

  # -------------------------------------------------------------------------- the face

  def check_face(self, path: str, is_crop: bool = False) -> np.ndarray:
    """The (face_size, face_size, 3) uint8 crop the model sees, or a ValueError saying
    why there is none (not an image, no face found, a face too small)."""
    if not path:
      raise ValueError("no face image: upload a photo with one clear frontal face")
    try:
      return sampling.load_face(path, self.face_size, is_crop)
    except ValueError as e:
      if str(e).startswith("cannot read"):
        raise ValueError("the uploaded file is not an image that can be read; upload a "
                         "PNG or JPEG photo with one clear frontal face") from e
      msg = str(e).replace(f"the face image {path}", "the uploaded file")
      msg = msg.replace(f"in {path}", "in the uploaded image").replace(path, "the image")
      raise ValueError(msg.replace("pass --face_is_crop", "tick 'already a face crop'")) from e

  # -------------------------------------------------------------------------- sampling

  def _sampler(self, name: str, steps: int):
    """(compiled sampler, its FLOPs per sample) for (shape, sampler, steps), made once."""
    shape = (1,) + tuple(self.built.shape)
    key = (shape, name, steps)
    if key not in self._samplers:
      cfg = dataclasses.replace(self.built.sampler, name=name, num_steps=steps)
      fn = sampling.make_sampler(self.built.model, self.built.diffusion, cfg, shape,
                                 scales_as_args=True)
      cond = self._cond(np.zeros((self.face_size, self.face_size, 3), np.uint8), "a")
      traced = dataclasses.replace(cfg, text_scale=jnp.float32(2), id_scale=jnp.float32(2))
      flops = cost_lib.sample_flops(self.built.model, self.restored.params, traced, cond,
                                    shape, self.codec)
      t0 = time.perf_counter()  # compile (and warm up) now, so samples time sampling only
      self._sample(fn, cond, 0, 1.0, 1.0)
      flops["compile_seconds"] = time.perf_counter() - t0
      self._samplers[key] = (fn, flops, cfg)
    return self._samplers[key]

  def _cond(self, crop: np.ndarray, prompt: str) -> dict:
    return {**conditions.prompt_fields(self.config, [prompt]),
            "face": video_io.to_unit(crop[None])}

  def _sample(self, fn, cond, seed: int, text_scale: float, face_scale: float) -> np.ndarray:
    video = fn(self.restored.params, cond, jax.random.key(seed), jnp.float32(text_scale),
               jnp.float32(face_scale))
    if self.codec is not None:  # a latent-space DiT: decode with its VAE
      video = self.codec.decode(jax.device_get(video))
    return video_io.to_uint8(jax.device_get(video)[0])

  def similarity(self, crop: np.ndarray, video_thwc: np.ndarray) -> np.ndarray | None:
    """Per-frame cosine of the identity probe's embedding to the reference's, or None."""
    if self.identity_probe is None:
      return None
    ref = self.identity_probe.embed_images(crop[None])[0]
    return self.identity_probe.embed_frames(video_thwc[None])[0] @ ref

  def action(self, video_thwc: np.ndarray) -> dict | None:
    """The action probe's read of the clip: its name and probability, or None."""
    if self.action_probe is None:
      return None
    logits = self.action_probe.action_logits(video_thwc[None])[0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    k = int(p.argmax())
    return dict(name=synthetic.ACTION_NAMES[k], probability=float(p[k]))

  def check_request(self, prompt, consent, text_scale, face_scale, sampler, steps, seed,
                    candidates) -> tuple[str, str, int, int, int]:
    """The request's (prompt, sampler, steps, seed, candidates), checked; ValueError says
    which value is wrong and what to use."""
    if not consent:
      raise ValueError("tick the consent statement first: a video of a real person needs "
                       "the consent of the person shown")
    prompt = str(prompt or "").strip()
    if not prompt:
      raise ValueError("the prompt is empty; describe what the person does")
    if sampler not in self.samplers:
      raise ValueError(f"sampler '{sampler}' does not fit this checkpoint ({self.objective}); "
                       f"use one of {self.samplers}")
    for name, value, hi in (("steps", steps, MAX_STEPS), ("candidates", candidates,
                                                          MAX_CANDIDATES)):
      if value is None or int(value) != value or not 1 <= int(value) <= hi:
        raise ValueError(f"{name}={value} must be a whole number from 1 to {hi}")
    registry.check_shortcut(self.config, self.built.cfg, dataclasses.replace(
        self.built.sampler, name=sampler, num_steps=int(steps)))
    if seed is None or int(seed) != seed or int(seed) < 0:
      raise ValueError(f"seed={seed} must be a non-negative whole number")
    for name, value in (("text guidance", text_scale), ("identity guidance", face_scale)):
      if value is None or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} scale {value} must be a number >= 0")
    return prompt, sampler, int(steps), int(seed), int(candidates)

  def generate(self, face_path: str, prompt: str, consent: bool,
               text_scale: float | None = None, face_scale: float | None = None,
               sampler: str | None = None, steps: int | None = None,
               seed: int = 0, candidates: int = 1, is_crop: bool = False) -> dict:
    """Samples ``candidates`` videos (seeds seed, seed+1, ...), keeps the most similar to
    the reference face and writes it; returns a dict with ``mp4``, ``png``, ``json``,
    ``plot`` paths, ``seed`` (of the kept video), ``similarity`` (per frame), ``action``,
    ``cost`` and ``provenance`` (the record embedded in the mp4). Scales, sampler and
    steps left out are the run's config's."""
    text_scale = self.built.sampler.text_scale if text_scale is None else text_scale
    face_scale = self.built.sampler.id_scale if face_scale is None else face_scale
    sampler = sampler or self.built.sampler.name
    steps = self.built.sampler.num_steps if steps is None else steps
    prompt, sampler, steps, seed, candidates = self.check_request(
        prompt, consent, text_scale, face_scale, sampler, steps, seed, candidates)
    crop = self.check_face(face_path, is_crop)
    with self._lock:
      return self._generate(face_path, crop, prompt, float(text_scale), float(face_scale),
                            sampler, steps, seed, candidates)

  def _generate(self, face_path, crop, prompt, text_scale, face_scale, sampler, steps, seed,
                candidates) -> dict:
    fn, flops, cfg = self._sampler(sampler, steps)
    cond = self._cond(crop, prompt)
    runs = []
    for s in range(seed, seed + candidates):
      t0 = time.perf_counter()
      video = self._sample(fn, cond, s, text_scale, face_scale)
      seconds = time.perf_counter() - t0
      sim = self.similarity(crop, video)
      runs.append(dict(seed=s, video=video, seconds=seconds, similarity=sim,
                       score=float(np.mean(sim)) if sim is not None else None))
    best = max(runs, key=lambda r: -np.inf if r["score"] is None else r["score"])
    video = best["video"]
    video_seconds = len(video) / self.fps
    total = flops["dit_flops_per_sample"] + flops["decode_flops_per_sample"]
    cost = dict(seconds=best["seconds"], flops=total, video_seconds=video_seconds,
                seconds_per_video_second=best["seconds"] / video_seconds,
                flops_per_video_second=total / video_seconds,
                network_passes=cfg.model_calls * (1 if cfg.one_pass else 3),
                candidates=candidates,
                seconds_all_candidates=float(sum(r["seconds"] for r in runs)))
    action = self.action(video)
    with open(face_path, "rb") as f:
      face_sha = hashlib.sha256(f.read()).hexdigest()
    sampler_fields = dict(dataclasses.asdict(cfg), text_scale=text_scale, id_scale=face_scale)
    record = sampling.sample_record(
        self.workdir, self.restored, self.config_hash, prompt=prompt, seed=best["seed"],
        face_sha256=face_sha, face_consent=CONSENT, consent_given_in="video_dit demo page",
        sampler=sampler_fields, video_shape=list(video.shape), fps=self.fps,
        best_of=dict(candidates=candidates, seeds=[r["seed"] for r in runs],
                     identity_similarity=[r["score"] for r in runs]))
    self._count += 1
    name = f"{time.strftime('%Y%m%d_%H%M%S')}_{self._count:04d}_seed{best['seed']}"
    prefix = os.path.join(self.out_dir, name)
    paths = video_io.write_sample(prefix, video, crop, self.fps, record)
    with open(prefix + ".json", "w") as f:
      json.dump(record, f, indent=2, sort_keys=True)
    plot = prefix + "_identity.png"
    self._plot(runs, best, plot)
    return dict(mp4=paths[0], png=paths[1], json=prefix + ".json", plot=plot,
                seed=best["seed"], crop=crop, video=video,
                similarity=None if best["similarity"] is None else best["similarity"].tolist(),
                candidates=[dict(seed=r["seed"], identity_similarity=r["score"]) for r in runs],
                action=action, cost=cost, provenance=record, notes=list(self.probe_notes))

  def _plot(self, runs, best, path: str) -> None:
    series = [dict(label=f"seed {r['seed']}" + (" (kept)" if r is best else ""),
                   x=np.arange(len(r["video"])), y=r["similarity"])
              for r in sorted(runs, key=lambda r: r is not best)[:6]
              if r["similarity"] is not None]
    title = "identity similarity to the reference, per frame"
    if self.identity_probe is not None and not self.identity_probe.verified:
      title += " (probe not verified)"
    plots.xy_plot(series, path, title, "frame", "cosine (identity probe)", size=(560, 300))
