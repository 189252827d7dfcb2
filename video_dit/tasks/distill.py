"""Cheaper sampling by distillation from a trained DiT (the teacher, frozen).

  guidance_distill  one-pass guidance: the student takes the (text, identity) guidance
                    scales as an input (``model.guidance_embed``) and learns the
                    teacher's 3-pass dual-guided prediction at scales drawn per example,
                    so a sampler step is one network pass instead of three.
  shortcut          few-step generation (Frans et al. 2024, "One Step Diffusion via
                    Shortcut Models"): the student takes the guidance scales and the
                    step size d (``model.step_embed``). At d = 0 it learns the teacher's
                    guided prediction (one pass from a guidance-distilled teacher, three
                    from a plain one); at d > 0 it learns to jump as far as two of its own
                    d/2 jumps (self-consistency, no gradient through the targets), so
                    1, 2, 4, ... steps of d = 1/N generate a video.

Both start from the teacher's parameters (the new inputs' embeddings are exactly zero
at their neutral values, ``layers.ScalarEmbedder``): step 0 of the student is the
teacher's conditional model. The teacher (``distill.teacher``: a workdir, its EMA
parameters) must have the student's architecture apart from those inputs; its frozen
parameters enter the train step as an argument (``Task.frozen``), not as constants.
The flow objective only (the shortcut jump is a straight-line step).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from video_dit import checkpoint, conditions, sharding
from video_dit import workdir as workdir_lib
from video_dit.diffusion import DiffusionConfig, guidance, schedules
from video_dit.models import flops as flops_lib
from video_dit.models import registry
from video_dit.tasks.dit import DiTTask

# Fields a student may set apart from its teacher: the distilled inputs and how the
# network runs (not what it computes), each compared at one fixed value.
_FREE_FIELDS = dict(guidance_embed=False, step_embed=False, matmul_dtype="", remat="none",
                    attention="einsum", dtype="float32")


def _range(name: str, value) -> tuple[float, float]:
  lo, hi = (float(v) for v in value)
  if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
    raise ValueError(f"distill.{name}={tuple(value)} must be (lo, hi) with 0 <= lo <= hi.")
  return lo, hi


class _DistillTask(DiTTask):
  """What both distillations share: the teacher, the warm start, the draws."""

  needs_guidance_embed = False
  needs_step_embed = False

  def __init__(self, config):
    super().__init__(config)
    d, name = config.distill, self.name
    if self.diffusion.config.objective != "flow":
      raise ValueError(f"task={name!r} distils a flow model; the config has "
                       f"diffusion.objective={self.diffusion.config.objective!r}.")
    for flag, need in (("guidance_embed", self.needs_guidance_embed),
                       ("step_embed", self.needs_step_embed)):
      if need and not getattr(self.cfg, flag):
        raise ValueError(f"task={name!r} trains a student with model.{flag}=True; set it.")
    if config.train.get("context_rate", 0.0):
      raise ValueError(f"task={name!r} distils text-to-video only; set "
                       "train.context_rate=0 (frame conditioning is not distilled yet).")
    self.text_scales = _range("text_scales", d.text_scales)
    self.id_scales = _range("id_scales", d.id_scales)
    if not d.teacher:
      raise ValueError(f"task={name!r} needs the trained model to distil: "
                       "--config.distill.teacher=<its workdir>.")
    teacher = workdir_lib.load(d.teacher, d.get("teacher_step") or None, ema=True)
    self.teacher_config, self.teacher_step = teacher.config, teacher.step
    self.teacher_model, self.teacher_cfg = teacher.model, teacher.model.cfg  # built by load
    self._teacher_params = teacher.params
    self._check_teacher(d.teacher)

  def _check_teacher(self, path: str) -> None:
    strip = lambda c: dataclasses.replace(c, **_FREE_FIELDS)
    student, teacher = strip(self.cfg), strip(self.teacher_cfg)
    diff = [f.name for f in dataclasses.fields(student)
            if getattr(student, f.name) != getattr(teacher, f.name)]
    if diff:
      raise ValueError(f"the teacher in {path} has another architecture: model fields "
                       f"{diff} differ ({[getattr(teacher, f) for f in diff]} there, "
                       f"{[getattr(student, f) for f in diff]} here); distil with the "
                       "teacher's model config.")
    t_shape = registry.video_shape(self.teacher_config)
    if tuple(t_shape) != tuple(self.shape):
      raise ValueError(f"the teacher in {path} sees clips of {tuple(t_shape)}, this config "
                       f"{tuple(self.shape)}; use the teacher's data/latent shape.")
    t_diff = DiffusionConfig.from_config(self.teacher_config.diffusion)
    # The frame-change term shapes training, not what the teacher predicts.
    if (dataclasses.replace(t_diff, motion_weight=0.0)
        != dataclasses.replace(self.diffusion.config, motion_weight=0.0)):
      raise ValueError(f"the teacher in {path} was trained with another diffusion config "
                       f"({t_diff}); use its config.diffusion.")
    if self.teacher_cfg.step_embed:
      raise ValueError(f"the teacher in {path} is already a shortcut model; distil from "
                       "a DiT or a guidance-distilled one.")

  # ----------------------------------------------------------------- trainer hooks

  def prepare(self, batch, key):
    del key
    if self._encode_in_step():
      batch = dict(batch, video=self.codec.encode(batch["video"]))
    return batch

  def frozen(self, mesh):
    return sharding.replicate(self._teacher_params, mesh)

  def warm_start(self, params):
    """The student's parameters: the teacher's, plus the new inputs' (kept as
    initialised, i.e. a no-op)."""
    params, _ = checkpoint.graft(params, self._teacher_params,
                                 f"the teacher {self.config.distill.teacher}")
    print(f"student initialised from the teacher {self.config.distill.teacher} "
          f"step {self.teacher_step}", flush=True)
    return params

  # ----------------------------------------------------------------- pieces

  def _draw_scales(self, key, b):
    k1, k2 = jax.random.split(key)
    return jnp.stack([jax.random.uniform(k1, (b,), minval=self.text_scales[0],
                                         maxval=self.text_scales[1]),
                      jax.random.uniform(k2, (b,), minval=self.id_scales[0],
                                         maxval=self.id_scales[1])], -1)

  def _teacher_pred(self, frozen, x, t, cond, scales):
    """The teacher's guided prediction at per-example ``scales`` (B, 2): one pass if it
    is guidance-distilled, else its 3-pass dual guidance."""
    fn = lambda x, t, c: self.teacher_model.apply(frozen, x, t, **c)
    if self.teacher_cfg.guidance_embed:
      b = x.shape[0]
      return fn(x, t, dict(cond, drop_text=jnp.zeros((b,), bool),
                           drop_id=jnp.zeros((b,), bool), guidance_scale=scales))
    bshape = (x.shape[0],) + (1,) * (x.ndim - 1)
    g = guidance.guided(fn, scales[:, 0].reshape(bshape), scales[:, 1].reshape(bshape))
    return g(x, t, cond)

  def _student(self, params, x, t, cond, scales=None, step=None):
    extra = {}
    if self.cfg.guidance_embed:
      extra["guidance_scale"] = scales
    if self.cfg.step_embed:
      extra["step_size"] = step
    b = x.shape[0]
    cond = dict(cond, drop_text=jnp.zeros((b,), bool), drop_id=jnp.zeros((b,), bool))
    return self.model.apply(params, x, t, **cond, **extra)

  def _to_velocity(self, pred, x, t):
    return schedules.flow_velocity(pred, x, t, self.diffusion.config.prediction)

  def _from_velocity(self, v, x, t):
    """The prediction whose velocity is ``v`` at (x, t)."""
    if self.diffusion.config.prediction == "velocity":
      return v
    return x - t.reshape((-1,) + (1,) * (x.ndim - 1)) * v  # x0 = x_t - t v

  @staticmethod
  def _noise(keys, x0):
    return jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], jnp.float32))(keys)


class GuidanceDistillTask(_DistillTask):
  """One-pass guidance (Meng et al. 2023, "On Distillation of Guided Diffusion
  Models", first stage): student(x_t, t, c, s) ~ teacher's dual-guided prediction."""

  name = "guidance_distill"
  needs_guidance_embed = True

  def __init__(self, config):
    super().__init__(config)
    if self.cfg.step_embed:
      raise ValueError("task='guidance_distill' trains one-pass guidance only; set "
                       "model.step_embed=False (task='shortcut' adds the step size).")
    if self.teacher_cfg.guidance_embed:
      raise ValueError(f"the teacher in {config.distill.teacher} is already guidance-"
                       "distilled; distil from the DiT it came from.")

  def loss(self, params, batch, keys, frozen=None):
    x0, cond = conditions.split_batch(batch)
    x0 = x0.astype(jnp.float32)
    k = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    t = jax.vmap(lambda k: jax.random.uniform(k, (), minval=1e-3, maxval=1.0))(k[:, 0])
    x_t = schedules.flow_interpolate(x0, self._noise(k[:, 1], x0), t)
    scales = jax.vmap(lambda k: self._draw_scales(k, 1)[0])(k[:, 2])
    target = jax.lax.stop_gradient(self._teacher_pred(frozen, x_t, t, cond, scales))
    pred = self._student(params, x_t, t, cond, scales)
    per_example = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, x0.ndim)))
    return jnp.mean(per_example), dict(t=t, per_example=per_example)

  def step_rates(self):
    c = self.config
    f = flops_lib.forward_flops(self.cfg, self.shape, c.text.max_len)
    flops = c.data.batch_size * f * (3 + 3)  # student fwd + bwd, teacher's 3 passes
    return float(flops), float(c.data.batch_size * flops_lib.num_tokens(self.cfg, self.shape))


class ShortcutTask(_DistillTask):
  """Few-step generation: a shortcut model fine-tuned from the teacher."""

  name = "shortcut"
  needs_step_embed = True

  def __init__(self, config):
    super().__init__(config)
    d = config.distill
    levels = math.log2(1.0 / d.min_step) if d.min_step > 0 else -1
    if not (0 < d.min_step <= 1 and levels == round(levels)):
      raise ValueError(f"distill.min_step={d.min_step} must be 1/2^k (e.g. 1/32): the "
                       "smallest jump the shortcut model learns.")
    self.levels = int(round(levels))
    if not 0 < d.bootstrap_frac < 1:
      raise ValueError(f"distill.bootstrap_frac={d.bootstrap_frac} must be in (0, 1): the "
                       "share of each batch that learns jumps (the rest learns d = 0).")
    self.bootstrap_frac = float(d.bootstrap_frac)
    if config.data.batch_size // config.optim.grad_accum < 2:
      raise ValueError("task='shortcut' splits each (micro-)batch between jumps and d = 0: "
                       "it needs at least 2 examples; raise data.batch_size.")
    if not self.cfg.guidance_embed:
      raise ValueError("task='shortcut' keeps guidance in its one pass: set "
                       "model.guidance_embed=True (the scales are an input; from a plain "
                       "teacher it learns them with the steps).")

  def loss(self, params, batch, keys, frozen=None):
    """The first ``bootstrap_frac`` of the batch learn a jump d = 2^j / M from two of
    the student's own d/2 jumps (M = 1 / min_step; the smallest jump's halves are d = 0
    predictions); the rest learn d = 0 from the teacher."""
    x0, cond = conditions.split_batch(batch)
    x0 = x0.astype(jnp.float32)
    b, m = x0.shape[0], 2 ** self.levels
    nb = min(b - 1, max(1, round(self.bootstrap_frac * b)))
    k = jax.vmap(lambda k: jax.random.split(k, 4))(keys)
    # Jump sizes and grid-aligned times of the bootstrap part: d = 2^j / M, t = n d.
    j = jax.vmap(lambda k: jax.random.randint(k, (), 0, self.levels + 1))(k[:nb, 0])
    d = (2.0 ** j) / m
    n = jax.vmap(lambda k, hi: jax.random.randint(k, (), 1, hi + 1))(
        k[:nb, 3], (m // 2 ** j).astype(jnp.int32))
    t_boot = n * d
    t_base = jax.vmap(lambda k: jax.random.uniform(k, (), minval=1e-3, maxval=1.0))(k[nb:, 0])
    t = jnp.concatenate([t_boot, t_base])
    x_t = schedules.flow_interpolate(x0, self._noise(k[:, 1], x0), t)
    scales = jax.vmap(lambda k: self._draw_scales(k, 1)[0])(k[:, 2])
    step = jnp.concatenate([d, jnp.zeros((b - nb,), jnp.float32)])

    # d = 0: the teacher's guided prediction.
    part = lambda tree, sl: jax.tree.map(lambda v: v[sl], tree)
    base_sl, boot_sl = slice(nb, None), slice(None, nb)
    base_target = self._teacher_pred(frozen, x_t[base_sl], t[base_sl], part(cond, base_sl),
                                     scales[base_sl])
    # d > 0: two half jumps of the student (the smallest jump's halves are d = 0).
    sp = jax.lax.stop_gradient(params)
    xb, cb, sb = x_t[boot_sl], part(cond, boot_sl), scales[boot_sl]
    half = jnp.where(j == 0, 0.0, d / 2)
    bshape = (nb,) + (1,) * (x0.ndim - 1)
    v1 = self._to_velocity(self._student(sp, xb, t_boot, cb, sb, half), xb, t_boot)
    x_mid = xb - (d / 2).reshape(bshape) * v1
    t_mid = t_boot - d / 2
    v2 = self._to_velocity(self._student(sp, x_mid, t_mid, cb, sb, half), x_mid, t_mid)
    boot_target = self._from_velocity((v1 + v2) / 2, xb, t_boot)
    target = jax.lax.stop_gradient(jnp.concatenate([boot_target, base_target]))

    pred = self._student(params, x_t, t, cond, scales, step)
    per_example = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, x0.ndim)))
    return jnp.mean(per_example), dict(t=t, per_example=per_example,
                                       bootstrap_loss=jnp.mean(per_example[:nb]),
                                       base_loss=jnp.mean(per_example[nb:]))

  def step_rates(self):
    c = self.config
    b = c.data.batch_size
    nb = b * self.bootstrap_frac
    f = flops_lib.forward_flops(self.cfg, self.shape, c.text.max_len)
    teacher = 1 if self.teacher_cfg.guidance_embed else 3
    flops = f * (3 * b + 2 * nb + teacher * (b - nb))
    return float(flops), float(b * flops_lib.num_tokens(self.cfg, self.shape))

