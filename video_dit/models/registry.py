"""Model sizes, and the one place an experiment config becomes a validated model.

``build(config)`` checks every model-side config value and raises one clear
error naming the bad value and the fix *before* anything is traced or compiled.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from video_dit.models.dit import REMAT_POLICIES, ModelConfig, VideoDiT
from video_dit.models.identity import IdentityEncoderConfig
from video_dit.diffusion import Diffusion, DiffusionConfig, SamplerConfig
from video_dit.models import attention, flops, layers
from video_dit.models.layers import MATMUL_DTYPES
from video_dit.models.patching import grid_shape
from video_dit.models.rope import check_split, default_split
from video_dit.models.text import TextEncoderConfig

# DiT sizes (width, depth, heads), plus "mu" for tests and the quickstart.
SIZES = {
    "mu": dict(width=64, depth=2, num_heads=4),
    "S": dict(width=384, depth=12, num_heads=6),
    "B": dict(width=768, depth=12, num_heads=12),
    "L": dict(width=1024, depth=24, num_heads=16),
    "XL": dict(width=1152, depth=28, num_heads=16),
}
DTYPES = ("float32", "bfloat16", "float16")
# text.encoder: trainable (small, from ids) | precomputed (frozen embeddings stored in the
# dataset; text.precomputed names the encoder, which also encodes prompts at sampling) | none
TEXT_ENCODERS = ("trainable", "precomputed", "none")
PRECOMPUTED_TEXT = {"minilm": 384}


def _choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {tuple(choices)}.")


def _heads(name, width, heads):
  if heads <= 0 or width % heads:
    raise ValueError(f"{name}: width={width} is not divisible by num_heads={heads}; "
                     "choose a head count that divides the width.")
  return width // heads


def task(config) -> str:
  """'dit' (the diffusion transformer), 'vae' (the video autoencoder), or a DiT
  distillation ('guidance_distill', 'shortcut'; ``tasks/distill.py``)."""
  return config.get("task", "dit")


def latent_source(config) -> str:
  """Where a DiT's inputs come from: 'pixels', 'encode' (pixels encoded on the fly by
  the codec) or 'cache' (latents stored by ``tools.encode_latents``)."""
  return config.latent.source if "latent" in config else "pixels"


def latent_codec(config) -> str:
  """The codec of a latent-space DiT: 'vae' (a trained VAE workdir, ``latent.vae_workdir``)
  or 'pca' (a linear tubelet codec fitted with the dataset, ``video_dit/pca_codec.py``);
  '' for a pixel-space DiT."""
  if latent_source(config) == "pixels":
    return ""
  return config.latent.get("codec", "vae")


def pixel_shape(config) -> tuple[int, int, int, int]:
  """(T, H, W, 3) video frames the data pipeline decodes."""
  return (config.data.frames, config.data.height, config.data.width, 3)


def video_shape(config) -> tuple[int, int, int, int]:
  """(T, H, W, C) of what the model sees: pixels, or the VAE's latents."""
  if task(config) != "vae" and latent_codec(config) == "pca":
    from video_dit import pca_codec  # pylint: disable=g-import-not-at-top
    lat = config.latent
    pca_codec.check(lat.tubelet, lat.channels, pixel_shape(config))
    return pca_codec.latent_shape(lat.tubelet, lat.channels, pixel_shape(config))
  if task(config) != "vae" and latent_source(config) != "pixels":
    shape = tuple(int(x) for x in config.latent.shape)
    if len(shape) != 4:
      raise ValueError(f"latent.shape={config.latent.shape} must be (T, H, W, C) of the "
                       "VAE's latents (tools.encode_latents prints it)")
    return shape
  return (config.data.frames, config.data.height, config.data.width, config.model.channels)


def pixel_tubelet(config) -> tuple[int, int, int] | None:
  """The pixels (frames, rows, columns) one DiT token covers: ``model.patch`` scaled by a
  codec's compression; None where they do not map to a fixed block: a causal VAE (its
  first latent frame is one pixel frame, the others several) or uneven sizes."""
  pixels, video = pixel_shape(config), video_shape(config)
  if latent_codec(config) == "vae" or any(p % v for p, v in zip(pixels[:3], video[:3])):
    return None
  return tuple(int(p) * (a // b) for p, a, b in zip(config.model.patch, pixels, video))


def vae_config(config):
  """Validates ``config.vae`` (+ data) and returns the VAEConfig."""
  from video_dit.models.autoencoder import VAEConfig  # pylint: disable=g-import-not-at-top
  v = config.vae
  if v.recon not in ("l1", "l2"):
    raise ValueError(f"vae.recon={v.recon!r} is not one of ('l1', 'l2').")
  if v.kl_weight < 0:
    raise ValueError(f"vae.kl_weight={v.kl_weight} must be >= 0.")
  if not v.ch_mult or v.time_down > len(v.ch_mult) - 1 or v.time_down < 0:
    raise ValueError(f"vae.time_down={v.time_down} must be in [0, len(vae.ch_mult) - 1 = "
                     f"{len(v.ch_mult) - 1}] (each temporal 2x rides on a spatial level).")
  if v.latent_channels < 1 or v.base < 1:
    raise ValueError("vae.latent_channels and vae.base must be >= 1.")
  _choice("model.dtype", config.model.dtype, DTYPES)
  cfg = VAEConfig(channels=3, base=v.base, ch_mult=tuple(v.ch_mult), num_res=v.num_res,
                  time_down=v.time_down, latent_channels=v.latent_channels, groups=v.groups,
                  dtype=config.model.dtype)
  for c in (cfg.base * m for m in cfg.ch_mult):
    if c % min(cfg.groups, c):
      raise ValueError(f"vae.groups={cfg.groups} does not divide {c} channels.")
  cfg.latent_shape(pixel_shape(config))  # raises when frames / size do not fit
  return cfg


def build_vae(config):
  from video_dit.models.autoencoder import VideoVAE  # pylint: disable=g-import-not-at-top
  cfg = vae_config(config)
  return VideoVAE(cfg), cfg


IDENTITY_MODES = ("none", "separate", "decoupled", "reference", "separate+reference",
                  "decoupled+reference")


def identity_paths(mode: str) -> tuple[str, bool]:
  """``identity.mode`` -> (the cross-attention path: 'separate' | 'decoupled' | '', whether
  in-context reference tokens join the sequence)."""
  _choice("identity.mode", mode, IDENTITY_MODES)
  parts = mode.split("+")
  return next((p for p in parts if p in ("separate", "decoupled")), ""), "reference" in parts


def model_config(config) -> ModelConfig:
  """Validates ``config.model/text/identity/data`` and returns the ModelConfig."""
  m, tx, idc = config.model, config.text, config.identity
  if latent_source(config) not in ("pixels", "encode", "cache"):
    raise ValueError(f"latent.source={config.latent.source!r} is not one of ('pixels', "
                     "'encode', 'cache').")
  if latent_source(config) != "pixels":
    _choice("latent.codec", latent_codec(config), ("vae", "pca"))
    if latent_codec(config) == "vae" and not config.latent.vae_workdir:
      raise ValueError("latent.source needs latent.vae_workdir: the trained VAE's workdir.")
    if video_shape(config)[-1] != m.channels:
      raise ValueError(f"model.channels={m.channels} but the latents have "
                       f"{video_shape(config)[-1]} channels; set model.channels to it.")
  head_dim = _heads("model", m.width, m.num_heads)
  patch = tuple(int(p) for p in m.patch)
  if len(patch) != 3 or min(patch) < 1:
    raise ValueError(f"model.patch={m.patch} must be three positive tubelet sizes (pt, ph, pw).")
  grid_shape(video_shape(config)[:3], patch)  # raises when not divisible
  head = m.get("head", "linear")  # older configs lack it
  _choice("model.head", head, ("linear", "overlap"))
  head_margin = m.get("head_margin", 0)
  if head == "overlap" and (min(patch[1:]) < 2 or not 0 <= head_margin <= min(patch[1:]) // 2):
    raise ValueError(f"model.head='overlap' with model.head_margin={head_margin} needs "
                     f"tubelets at least 2 high and wide and a margin in 0..half of them "
                     f"(0 = half), not model.patch={patch}; e.g. patch (2, 8, 8) with "
                     "margin 2, or model.head='linear'.")
  head_margin_t = m.get("head_margin_t", 0)
  if head_margin_t and (head != "overlap" or not 0 <= head_margin_t <= patch[0] // 2):
    raise ValueError(f"model.head_margin_t={head_margin_t} needs model.head='overlap' and "
                     f"at most half the tubelet's {patch[0]} frames (0 = no overlap in "
                     "time).")
  _choice("model.dtype", m.dtype, DTYPES)
  _choice("model.remat", m.remat, REMAT_POLICIES)
  matmul_dtype = m.get("matmul_dtype", "")
  _choice("model.matmul_dtype", matmul_dtype, MATMUL_DTYPES)
  attention.check(m.attention, jax.default_backend(), m.dtype)
  if not (m.rope or m.sincos):
    raise ValueError("the model has no position information; set model.rope=True "
                     "and/or model.sincos=True.")
  split = (0, 0, 0)
  if m.rope:
    split = check_split(m.rope_split, head_dim) if m.rope_split else default_split(head_dim)
  _heads("text", tx.width, tx.num_heads)
  _choice("text.encoder", tx.encoder, TEXT_ENCODERS)
  precomputed_dim = 0
  if tx.encoder == "precomputed":
    _choice("text.precomputed", tx.get("precomputed", ""), PRECOMPUTED_TEXT)
    precomputed_dim = PRECOMPUTED_TEXT[tx.precomputed]
  _heads("identity", idc.width, idc.num_heads)
  cross, reference = identity_paths(idc.mode)
  reference_codec = ""
  if cross == "decoupled" and tx.encoder == "none":
    raise ValueError("identity.mode='decoupled' shares the text cross-attention; it needs a "
                     "text encoder (text.encoder != 'none') or use identity.mode='separate'.")
  scan = bool(m.get("scan_layers", False))
  layout = m.get("attention_layout", "full")
  _choice("model.attention_layout", layout, attention.LAYOUTS)
  if layout == "factorised":
    if scan:
      raise ValueError("model.attention_layout='factorised' alternates spatial and temporal "
                       "blocks, which are not identical; set model.scan_layers=False.")
    if reference:
      raise ValueError(f"identity.mode={idc.mode!r} (in-context reference tokens) needs "
                       "model.attention_layout='full': the video attends to the reference "
                       "frame across all its tokens.")
  if scan and idc.every != 1 and cross:
    raise ValueError(f"model.scan_layers=True needs identical blocks, but identity.every="
                     f"{idc.every}; set identity.every=1 or model.scan_layers=False.")
  if reference:
    if scan:
      raise ValueError(f"identity.mode={idc.mode!r} (in-context reference tokens) runs the "
                       "blocks unscanned; set model.scan_layers=False.")
    if latent_codec(config) == "vae":
      raise ValueError(f"identity.mode={idc.mode!r} encodes the reference face with the "
                       "DiT's codec: it works in pixels or with latent.codec='pca', not with "
                       "a VAE yet.")
    if latent_codec(config) == "pca":
      from video_dit import pca_codec  # pylint: disable=g-import-not-at-top
      reference_codec = os.path.abspath(pca_codec.path_for(config))
    elif m.channels != 3:
      raise ValueError(f"identity.mode={idc.mode!r} in pixels puts the face crop in the "
                       f"sequence: it needs model.channels=3 (got {m.channels}).")
    if not idc.face_size:
      raise ValueError(f"identity.mode={idc.mode!r} needs the face crop: set "
                       "identity.face_size.")
    if idc.pooled_to_adaln and not cross:
      raise ValueError("identity.pooled_to_adaln needs the identity encoder: use "
                       "identity.mode='separate+reference' or pooled_to_adaln=False.")
  _choice("identity.gate", idc.gate, ("zero", "none"))
  if idc.every < 1:
    raise ValueError(f"identity.every={idc.every} must be >= 1 (1 = every block).")
  if cross and not (idc.face_size or idc.embed_dim):
    raise ValueError("the identity encoder has no input; set identity.face_size (face crop "
                     "side) and/or identity.embed_dim (external face-embedding size).")
  if idc.face_size and idc.face_size % idc.face_patch:
    raise ValueError(f"identity.face_size={idc.face_size} is not divisible by "
                     f"identity.face_patch={idc.face_patch}; use a multiple of it.")
  if idc.num_tokens < 1:
    raise ValueError(f"identity.num_tokens={idc.num_tokens} must be >= 1.")

  frame_conditioning = check_frame_conditioning(config, patch)
  skip_sigma_data = 0.0
  if config.diffusion.get("precondition", "none") != "none":  # older configs lack it
    skip_sigma_data = DiffusionConfig.from_config(config.diffusion).sigma_data  # validates
  text = TextEncoderConfig(vocab_size=tx.vocab_size, max_len=tx.max_len, width=tx.width,
                           depth=tx.depth, num_heads=tx.num_heads)
  ident = IdentityEncoderConfig(
      face_size=idc.face_size, face_patch=idc.face_patch, embed_dim=idc.embed_dim,
      embed_tokens=idc.embed_tokens, width=idc.width, depth=idc.depth,
      num_heads=idc.num_heads, num_tokens=idc.num_tokens,
      resampler_depth=idc.resampler_depth)
  return ModelConfig(
      width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
      patch=patch, channels=m.channels, learn_sigma=config.diffusion.learn_sigma, rope=m.rope,
      rope_split=split, rope_theta=m.rope_theta, sincos=m.sincos, dtype=m.dtype,
      matmul_dtype=layers.resolve_matmul_dtype(matmul_dtype),  # 'auto': probed once, last
      remat=m.remat, scan_layers=scan, attention=m.attention,
      attention_layout=layout, text=text,
      use_text=tx.encoder != "none", use_identity=bool(cross),
      text_pooled_to_adaln=tx.pooled_to_adaln, text_precomputed_dim=precomputed_dim,
      identity=ident, identity_mode=cross or "separate", identity_reference=reference,
      reference_codec=reference_codec,
      identity_gate=idc.gate, identity_scale=idc.scale, identity_every=idc.every,
      identity_pooled_to_adaln=idc.pooled_to_adaln,
      guidance_embed=bool(m.get("guidance_embed", False)),
      step_embed=bool(m.get("step_embed", False)), frame_conditioning=frame_conditioning,
      skip_sigma_data=skip_sigma_data, head=head,
      head_margin=head_margin, head_margin_t=head_margin_t)


def check_frame_conditioning(config, patch) -> bool:
  """Validates ``train.context_rate`` / ``train.context_noise`` (``diffusion/context.py``);
  -> whether the model takes given frames."""
  rate = float(config.train.get("context_rate", 0.0))  # older configs lack it
  noise = float(config.train.get("context_noise", 0.0))
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"train.context_rate={rate} must be in [0, 1] (the share of training "
                     "examples with given frames; 0 = no frame conditioning).")
  if not 0.0 <= noise < 1.0:
    raise ValueError(f"train.context_noise={noise} must be in [0, 1): the highest noise "
                     "level of a given frame in training (0 = always clean).")
  if rate > 0:
    if video_shape(config)[0] // patch[0] < 2:
      raise ValueError(f"train.context_rate={rate} needs at least two token frames to give "
                       f"one and generate another; the clip has {video_shape(config)[0]} "
                       f"frames and model.patch[0]={patch[0]}.")
    if noise > 0 and config.diffusion.objective != "flow":
      raise ValueError(f"train.context_noise={noise} noises given frames on a flow's path; "
                       "with diffusion.objective='ddpm' set it to 0.")
  return rate > 0


def build(config) -> tuple[VideoDiT, ModelConfig]:
  """The validated model of an experiment config."""
  cfg = model_config(config)
  return VideoDiT(cfg), cfg


def build_model(config):
  """The validated network of any task's config: the VideoDiT or the video VAE."""
  return (build_vae if task(config) == "vae" else build)(config)[0]


@dataclasses.dataclass(frozen=True)
class BuiltDiT:
  """Everything a DiT config derives: built once, used by training, sampling,
  evaluation and the benchmarks alike."""
  model: VideoDiT
  cfg: ModelConfig
  shape: tuple[int, int, int, int]    # (T, H, W, C) the model sees: pixels or latents
  diffusion: Diffusion                # its time shift depends on the tokens per clip
  sampler: SamplerConfig              # config.sample, checked against the objective


def build_dit(config) -> BuiltDiT:
  """The validated DiT of a config with its Diffusion and sampler."""
  model, cfg = build(config)
  shape = video_shape(config)
  diffusion = Diffusion.from_config(config.diffusion, flops.num_tokens(cfg, shape))
  sampler = dataclasses.replace(SamplerConfig.from_config(config.sample),
                                one_pass=cfg.guidance_embed)
  sampler.check(diffusion.config.objective)
  check_shortcut(config, cfg, sampler)
  if sampler.cache_threshold > 0 and cfg.scan_layers:
    raise ValueError(f"cache_threshold={sampler.cache_threshold} needs model.scan_layers=False "
                     "(the step cache's indicator reads block 0's adaLN); use "
                     "--cache_threshold=0 for this model.")
  return BuiltDiT(model, cfg, shape, diffusion, sampler)


def check_shortcut(config, cfg: ModelConfig, sampler: SamplerConfig) -> None:
  """The shortcut sampler needs a shortcut model and a step count it was trained for."""
  if sampler.name != "shortcut":
    return
  if not cfg.step_embed:
    raise ValueError("sampler 'shortcut' needs a few-step model (task='shortcut', which "
                     "adds model.step_embed); use --sampler=euler for this checkpoint.")
  n = sampler.num_steps
  most = n
  if "distill" in config:
    min_step = config.distill.min_step
    most = round(1.0 / min_step) if 0 < min_step <= 1 else 0
    if most < 1 or most & (most - 1) or abs(most * min_step - 1) > 1e-6:
      raise ValueError(f"distill.min_step={min_step} must be 1/2^k (e.g. 1/32): the "
                       "smallest jump the shortcut model learns.")
  if n & (n - 1) or n > most:
    raise ValueError(f"a shortcut model takes 1, 2, 4, ... up to {most} steps (the step "
                     f"sizes it was trained on); num_steps={n} is not one of them.")


def dummy_inputs(config, batch: int) -> dict[str, Any]:
  """Zero inputs of the right shapes for every input the model is configured with,
  named as the model's arguments (= the pipeline's batch fields, ``conditions``)."""
  if task(config) == "vae":
    return dict(x_bthwc=jnp.zeros((batch,) + pixel_shape(config), jnp.float32))
  cfg = model_config(config)
  inputs = dict(x=jnp.zeros((batch,) + video_shape(config), jnp.float32),
                t=jnp.zeros((batch,), jnp.float32))
  if cfg.use_text and cfg.text_precomputed_dim:
    inputs["text_emb"] = jnp.zeros((batch, cfg.text.max_len, cfg.text_precomputed_dim))
    inputs["text_mask"] = jnp.ones((batch, cfg.text.max_len), bool)
    inputs["text_pooled"] = jnp.zeros((batch, cfg.text_precomputed_dim))
  elif cfg.use_text:
    inputs["text_ids"] = jnp.ones((batch, cfg.text.max_len), jnp.int32)
  if cfg.identity_reference or (cfg.use_identity and cfg.identity.face_size):
    s = cfg.identity.face_size
    inputs["face"] = jnp.zeros((batch, s, s, 3), jnp.float32)
  if cfg.use_identity and cfg.identity.embed_dim:
    inputs["face_embed"] = jnp.zeros((batch, cfg.identity.embed_dim), jnp.float32)
  if cfg.guidance_embed:
    inputs["guidance_scale"] = jnp.ones((batch, 2), jnp.float32)
  if cfg.step_embed:
    inputs["step_size"] = jnp.zeros((batch,), jnp.float32)
  return inputs


def random_inputs(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random host inputs of ``dummy_inputs``' shapes: x ~ N(0, 1), t ~ U(0, 1),
  token ids in [1, vocab), face crop / embedding ~ U(-1, 1)."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, v in dummy_inputs(config, batch).items():
    if k == "x":
      out[k] = rng.standard_normal(v.shape, dtype=np.float32)
    elif k in ("t", "step_size"):
      out[k] = rng.uniform(0, 1, v.shape).astype(np.float32)
    elif k == "guidance_scale":
      out[k] = rng.uniform(1, 4, v.shape).astype(np.float32)
    elif k == "text_ids":
      out[k] = rng.integers(1, config.text.vocab_size, v.shape, dtype=np.int32)
    elif k == "text_mask":
      out[k] = np.arange(v.shape[1])[None] < rng.integers(1, v.shape[1] + 1, (batch, 1))
    elif k in ("text_emb", "text_pooled"):
      out[k] = rng.standard_normal(v.shape).astype(np.float32)
    else:
      out[k] = rng.uniform(-1, 1, v.shape).astype(np.float32)
  return out
