"""Shared config pieces: arg-string parsing, the default field groups, runlocal.

Experiment files call ``parse_arg`` on their arg string, start from
``base_config()``, set what the experiment is about, and apply ``runlocal``
when asked, so tests and laptops use the real config shrunk, never a hand-built
one.
"""

from __future__ import annotations

import ml_collections

from video_dit.models.registry import SIZES


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """'variant=S,frames=16,runlocal' -> ConfigDict typed like ``spec``'s defaults.

  A bare name sets a bool to True; unknown keys raise, listing the known ones.
  """
  out = ml_collections.ConfigDict(spec)
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, eq, value = item.partition("=")
    if key not in spec:
      raise ValueError(f"unknown config arg '{key}' in '{arg}'; known: {sorted(spec)}")
    default = spec[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config arg '{key}' needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config arg {key}={value} is not a bool (true/false)")
      out[key] = value.lower() in ("true", "1")
    else:
      try:
        out[key] = type(default)(value)
      except ValueError:
        raise ValueError(f"config arg {key}={value} is not a {type(default).__name__}") from None
  return out


def parse_patch(text: str) -> tuple[int, int, int]:
  """'2x4x4' -> (2, 4, 4)."""
  parts = text.lower().split("x")
  if len(parts) != 3 or not all(p.isdigit() for p in parts):
    raise ValueError(f"patch='{text}' must look like PTxPHxPW, e.g. 2x4x4")
  return tuple(int(p) for p in parts)


def set_size(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant not in SIZES:
    raise ValueError(f"model variant '{variant}' is unknown; use one of {list(SIZES)}")
  config.model.variant = variant
  config.model.update(SIZES[variant])


def base_config() -> ml_collections.ConfigDict:
  """Every field group with its default; experiments override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 100_000

  c.model = dict(
      variant="S", width=384, depth=12, num_heads=6, mlp_ratio=4.0,
      patch=(1, 2, 2), channels=3,
      rope=True, rope_split=(), rope_theta=10000.0,   # () = default (t, h, w) split
      sincos=False, dtype="bfloat16", remat="none", attention="einsum",
      scan_layers=False,  # remat: none|full|dots_saveable; attention: einsum|xla|cudnn
      attention_layout="full",  # or "factorised": Latte-style spatial/temporal blocks
      head="linear",  # or "overlap": tapered output windows that overlap their neighbours
      # overlap: input cells (pixels, or latent cells) a window reaches beyond its tubelet
      head_margin=0,  # (0 = half of it)
      head_margin_t=0,  # overlap: frames a window reaches beyond its tubelet (0 = none)
      matmul_dtype="",    # "bfloat16": dense layers take bf16 inputs, accumulate in f32
      guidance_embed=False, step_embed=False)  # distilled inputs (common.distill)
  c.text = dict(encoder="trainable",  # trainable | precomputed (+ text.precomputed) | none
                precomputed="minilm",  # frozen encoder whose embeddings the dataset stores
                vocab_size=8192, max_len=32, width=256, depth=2, num_heads=4,
                pooled_to_adaln=True)
  c.identity = dict(
      mode="separate", gate="zero",  # mode: none | separate | decoupled | reference |
      #                                  separate+reference | decoupled+reference
      scale=1.0, every=1, pooled_to_adaln=False,
      face_size=64, face_patch=8, embed_dim=0, embed_tokens=4,
      width=256, depth=4, num_heads=4, num_tokens=16, resampler_depth=2)
  c.diffusion = dict(
      objective="flow", prediction="velocity", t_sampling="logit_normal", t_mean=0.0,
      t_std=1.0, shift=1.0, shift_base_tokens=256, schedule="linear", num_timesteps=1000,
      weighting="none", min_snr_gamma=5.0, learn_sigma=False, vlb_weight=1.0,
      precondition="none", sigma_data=0.5,
      t_uniform=0.0,  # share of training times drawn uniformly (the rest logit-normal)
      motion_weight=0.0)  # + this x the error of the frame-to-frame change
  c.sample = dict(sampler="euler", num_steps=50, shift=0.0, eta=0.0, text_scale=4.0,
                  face_scale=2.0, interval=(0.0, 1.0),
                  cache_threshold=0.0,  # step cache: skip the blocks while little changes
                  fps=8.0,
                  every_steps=0, num_videos=4)  # periodic samples while training (0 = off)
  c.data = dict(dataset="synthetic_faces", data_dir="data/synthetic_faces", frames=16,
                height=64, width=64, stride=1, batch_size=32, num_threads=4, prefetch=8,
                cache_mb=1024,  # decoded records kept in memory per process (0 = off)
                # synthetic_faces, built on first use when data_dir has no dataset:
                num_identities=200, clips_per_identity=8, test_fraction=0.2)
  c.optim = dict(lr=1e-4, schedule="cosine", warmup_steps=1000, final_lr_frac=0.1,
                 weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0, grad_accum=1)
  c.ema = dict(decay=0.9999, warmup=True)
  # Condition dropout for guidance; 'stop' or 'skip' the update on a non-finite loss.
  c.train = dict(log_every=50, text_drop=0.1, id_drop=0.1, both_drop=0.1, nonfinite="stop",
                 # Frame conditioning (image-to-video, extension): the share of examples
                 # with given frames and their highest noise level (diffusion/context.py).
                 context_rate=0.0, context_noise=0.1)
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.ckpt = dict(every_steps=1000, keep=3, init_from="",
                on_corrupt="stop")  # or "previous": resume from the last step that verifies
  return c


DISTILL = ("guidance", "shortcut")


def distill(c: ml_collections.ConfigDict, kind: str, teacher: str) -> None:
  """A cheaper student of the trained DiT in the workdir ``teacher``, whose model config
  ``c`` must be (``video_dit/tasks/distill.py``):

  * 'guidance': one-pass guidance (``task='guidance_distill'``): the guidance scales
    become an input; a step costs one network pass instead of three.
  * 'shortcut': few-step generation (``task='shortcut'``), one-pass guidance included
    (from a plain teacher it learns both): 1, 2, 4, ... 32 steps of one pass each.
  """
  if kind not in DISTILL:
    raise ValueError(f"distill={kind} is unknown; use one of {DISTILL}")
  c.distill = dict(teacher=teacher, teacher_step=0,  # 0 = the teacher's latest step
                   text_scales=(1.0, 6.0), id_scales=(1.0, 4.0),  # drawn per example
                   min_step=1 / 32, bootstrap_frac=0.25)  # shortcut: jumps 1/32 .. 1
  c.model.guidance_embed = True
  c.model.step_embed = kind == "shortcut"
  c.task = "guidance_distill" if kind == "guidance" else "shortcut"
  c.optim.update(lr=1e-4, schedule="constant", warmup_steps=50)
  c.total_steps = 1000
  if kind == "shortcut":
    c.sample.update(sampler="shortcut", num_steps=4)


def runlocal(c: ml_collections.ConfigDict) -> None:
  """Shrinks a config for a 2-core laptop and for tests (seconds to compile)."""
  set_size(c, "mu")
  c.model.patch = (2, 8, 8)
  c.model.dtype = "float32"
  c.text.update(vocab_size=256, max_len=16, width=32, depth=1, num_heads=2)
  c.identity.update(face_size=32, face_patch=8, width=32, depth=1, num_heads=2,
                    num_tokens=4, resampler_depth=1)
  c.data.update(data_dir="data/synthetic_faces_runlocal", frames=8, height=32, width=32,
                batch_size=8, num_identities=20, clips_per_identity=4)
  c.optim.update(lr=1e-3, warmup_steps=5)
  c.ema.decay = 0.99
  c.train.log_every = 5
  c.sample.num_steps = 8
  c.total_steps = 20
  c.ckpt.update(every_steps=10, keep=2)
