"""VideoDiT: a diffusion transformer over spacetime patches with identity conditioning.

    video (B, T, H, W, C) --patchify--> tokens (B, L, pt*ph*pw*C) --linear--> (B, L, D)
    t --sinusoid+MLP--> c (B, D);  + pooled text;  (+ pooled identity)
    text ids  --text encoder--> (B, Lt, D) + mask;  null tokens where text is dropped
    face      --identity encoder--> (B, K, D);      null tokens where identity is dropped
    reference face --patchify (as a clean frame at t = -1)--> Lr tokens   (optional)
    context frames (frame conditioning): given frames replace x's, their tokens get a
      learned flag and their own adaLN (c at their noise level, usually t = 0)
    N x DiTBlock:  x += gate_msa * SelfAttn(adaLN(x), 3D RoPE)      full spacetime, or
                                  within / across frames in alternating blocks
                                  (model.attention_layout='factorised')
                                  (+ the reference tokens' keys/values; they attend
                                   only to themselves, with adaLN at diffusion t = 0)
                   x += TextCrossAttn(LN(x), text)
                   x += gate_id * IdCrossAttn(LN(x), identity)        every n-th block
                   x += gate_mlp * MLP(adaLN(x))
    FinalLayer: adaLN + linear to pt*ph*pw*C (x2 with learned sigma) --unpatchify--> video
      (model.head='overlap': each token paints a window model.head_margin input cells beyond
       its tubelet on each side (default half the tubelet), tapered to 0 at its edges;
       neighbouring windows blend, so there are no borders between tokens)

adaLN-Zero: every modulation, the text cross-attention output and the final
layer start at zero, so a fresh model outputs exactly zero and a fresh block is
the identity (up to the identity branch, see ``ModelConfig.identity_gate``).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from video_dit.diffusion import schedules
from video_dit.models import attention, layers
from video_dit.models.identity import IdentityEncoder, IdentityEncoderConfig
from video_dit.models.layers import dense, layer_norm, logical, modulate, zeros
from video_dit.models.patching import grid_positions, grid_shape, patchify, unpatchify
from video_dit.models.rope import rope_angles, sincos_nd
from video_dit.models.text import TextEncoder, TextEncoderConfig
from video_dit.sharding import constrain

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
_ACT = ("act_batch", "act_len", "act_embed")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the network needs; built and validated by ``registry.model_config``."""
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  patch: tuple[int, int, int] = (1, 2, 2)
  channels: int = 3
  learn_sigma: bool = False        # DDPM: also output the interpolated log-variance
  rope: bool = True
  rope_split: tuple[int, int, int] = (16, 24, 24)   # (t, h, w) shares of head_dim
  rope_theta: float = 10000.0
  sincos: bool = False                              # fixed absolute 3D embedding
  dtype: str = "float32"                            # compute dtype; params are f32
  matmul_dtype: str = ""          # "bfloat16": dense layers take bf16 inputs, f32 accumulation
  remat: str = "none"
  scan_layers: bool = False        # one scanned block (compile time, memory at depth)
  attention: str = "einsum"
  attention_layout: str = "full"   # or "factorised": spatial, temporal, spatial, ... blocks
  use_text: bool = True            # False: no text encoder and no text cross-attention
  use_identity: bool = True        # False: no identity encoder and no identity attention
  text: TextEncoderConfig = TextEncoderConfig()
  text_pooled_to_adaln: bool = True
  text_precomputed_dim: int = 0    # > 0: precomputed text embeddings of this size, no encoder
  identity: IdentityEncoderConfig = IdentityEncoderConfig()
  identity_mode: str = "separate"                   # or "decoupled" (IP-Adapter style)
  identity_reference: bool = False                  # in-context reference tokens
  reference_codec: str = ""  # latent-space DiT: the fitted PCA codec the reference is encoded with
  identity_gate: str = "zero"                       # zero-initialised gate, or "none"
  identity_scale: float = 1.0                       # decoupled mode: weight of identity
  identity_every: int = 1                           # identity attention in every n-th block
  identity_pooled_to_adaln: bool = False
  # Distilled inputs (``tasks/distill.py``), each a no-op at its neutral value:
  guidance_embed: bool = False     # (text_scale, id_scale): one-pass guidance; (1, 1) neutral
  step_embed: bool = False         # shortcut step size d (0 = the instantaneous velocity)
  frame_conditioning: bool = False  # given context frames: image-to-video, extension
  # > 0: a flow x0 prediction preconditioned with the data's standard deviation
  # (diffusion.precondition='skip'): out = c_skip(t) x_t + c_out(t) F
  skip_sigma_data: float = 0.0
  head: str = "linear"             # or "overlap": tapered overlapping output windows
  head_margin: int = 0             # overlap: input cells beyond the tubelet; 0 = half
  head_margin_t: int = 0           # overlap: frames beyond the tubelet (0 = none)


class DiTBlock(nn.Module):
  """One block; with ``ref`` also the reference tokens' stream (see ``VideoDiT``)."""
  cfg: ModelConfig
  has_identity: bool
  layout: str = "full"    # self-attention: full, or (factorised) spatial / temporal
  grid: tuple[int, int, int] = ()  # (T', H', W') token grid, for a factorised layout

  @nn.compact
  def __call__(self, x_bld, c_bd, angles, text_btd, text_mask_bt, id_bkd, ref=None,
               modulated_only=False):
    """-> (x_bld, the reference stream or None); ``modulated_only``: (the attention's
    adaLN-modulated input, None), the step cache's indicator. ``c_bd`` as
    ``_modulation`` takes it (with context frames, a tuple)."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    attn_kw = dict(num_heads=cfg.num_heads, dtype=dt, impl=cfg.attention)
    # adaLN-Zero: zero-init so every gate starts closed and the block is the identity.
    adaln = dense(6 * cfg.width, ("embed", "mlp"), dt, init=zeros, name="adaln")
    norm1 = layer_norm(dt, affine=False, name="norm1")
    norm2 = layer_norm(dt, affine=False, name="norm2")
    attn = attention.SelfAttention(**attn_kw, name="attn")
    mlp = layers.Mlp(int(cfg.width * cfg.mlp_ratio), dtype=dt, name="mlp")

    ref_out, ref_kv, ref_mask = None, None, None
    if ref is not None:
      ref_mask = ref.get("mask")
      if "kv" in ref:  # cached: the reference stream never sees the video
        ref_kv = ref["kv"]
      else:
        # Reference tokens: clean (their own adaLN at t=0), attending only to themselves;
        # the last block needs only their keys and values.
        r = ref["tokens"]
        sr, cr, gr, sm, cm, gm = _modulation(adaln, ref["c"], 6)
        h_r = modulate(norm1(r), sr, cr)
        if ref.get("last"):
          ref_kv = attn(h_r, ref["angles"], kv_only=True)
        else:
          o, ref_kv = attn(h_r, ref["angles"], return_kv=True)
          r = r + gr * o
          ref_out = r + gm * mlp(modulate(norm2(r), sm, cm))
        self.sow("intermediates", "ref_kv", ref_kv)

    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _modulation(
        adaln, c_bd, 6)
    h = modulate(norm1(x_bld), shift_msa, scale_msa)
    if modulated_only:
      return h, None
    if ref_mask is not None:  # (B,) -> every reference key of that example
      ref_mask = jnp.broadcast_to(ref_mask[:, None], ref_kv[0].shape[:2])
    groups = None if self.layout == "full" else (self.layout, self.grid)
    x_bld = x_bld + gate_msa * attn(h, angles, extra_kv=ref_kv, extra_mask_bk=ref_mask,
                                             groups=groups)
    x_bld = constrain(x_bld, _ACT)

    has_identity = self.has_identity and id_bkd is not None
    decoupled = has_identity and cfg.identity_mode == "decoupled"
    if text_btd is not None:
      h = layer_norm(dt, name="norm_text")(x_bld)
      x_bld = x_bld + attention.CrossAttention(
          **attn_kw, zero_out=True, extra_gate=cfg.identity_gate == "zero",
          name="text_attn")(h, text_btd, text_mask_bt, id_bkd if decoupled else None,
                            cfg.identity_scale)

    if has_identity and not decoupled:
      h = layer_norm(dt, name="norm_id")(x_bld)
      out = attention.CrossAttention(**attn_kw, name="id_attn")(h, id_bkd)  # (B, L, D)
      if cfg.identity_gate == "zero":
        # Closed at init: identity can join an already trained model as a no-op.
        out = out * self.param("id_gate", logical(zeros, "embed"), (cfg.width,)).astype(dt)
      x_bld = x_bld + out

    h = modulate(norm2(x_bld), shift_mlp, scale_mlp)
    x_bld = x_bld + gate_mlp * mlp(h)
    return constrain(x_bld, _ACT), ref_out


class _ScanStep(nn.Module):
  """A DiTBlock in ``nn.scan``'s (carry, x) -> (carry, y) form."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_bld, *args):
    return DiTBlock(self.cfg, True, name="block")(x_bld, *args)[0], None


class FinalLayer(nn.Module):
  cfg: ModelConfig
  out_dim: int

  @nn.compact
  def __call__(self, x_bld, c_bd):
    dt = jnp.dtype(self.cfg.dtype)
    # Zero-init: a fresh model predicts exactly zero.
    shift, scale = _modulation(
        dense(2 * self.cfg.width, ("embed", "mlp"), dt, init=zeros, name="adaln"), c_bd, 2)
    h = modulate(layer_norm(dt, affine=False, name="norm")(x_bld), shift, scale)
    return dense(self.out_dim, ("embed", "patch"), dt, init=zeros, name="linear")(h)


def _modulation(adaln, c, n: int):
  """adaLN's n (B, 1, D) modulations of c (B, D); with context frames c is
  (c (B, D), the context tokens' c (B, D), their mask (B, L)) and each is (B, L, D)."""
  if isinstance(c, tuple):
    c_bd, c_ctx_bd, mask_bl = c
    out = jnp.where(mask_bl[..., None], adaln(nn.silu(c_ctx_bd))[:, None],
                    adaln(nn.silu(c_bd))[:, None])
  else:
    out = adaln(nn.silu(c))[:, None]
  return jnp.split(out, n, -1)


def _masked_mean(x_bld, mask_bl):
  w = mask_bl.astype(jnp.float32)[..., None]
  return (x_bld.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


class VideoDiT(nn.Module):
  """Predicts the diffusion target for a noisy video given t, text and identity."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, *args, **kwargs):
    """See ``_forward``; dense layers follow ``cfg.matmul_dtype``."""
    with layers.matmul_policy(self.cfg.matmul_dtype):
      return self._forward(*args, **kwargs)

  def _forward(self, x, t, text_ids=None, face=None, face_embed=None, drop_text=None,
               drop_id=None, text_emb=None, text_mask=None, text_pooled=None, ref_kv=None,
               guidance_scale=None, step_size=None, cache=None, residual=None,
               encoded=None, context=None, context_mask=None, context_t=None):
    """The conditions are named as the input pipeline's batch fields
    (``video_dit.conditions``). Args:
      x: (B, T, H, W, C) noisy video (or latents).
      t: (B,) diffusion time in [0, 1].
      text_ids: (B, Lt) token ids (0 = padding); None means "no text".
      text_emb / text_mask / text_pooled: with ``text.encoder='precomputed'`` instead
        of ids: a frozen encoder's token embeddings (B, Lt, E), their mask (B, Lt) and
        its pooled sentence vector (B, E) (e.g. MiniLM's, stored in the dataset).
      face / face_embed: reference face crop (B, S, S, 3) in [-1, 1] and/or face
        embedding (B, E), as the identity encoder is configured; both None means
        "no identity".
      drop_text / drop_id: (B,) bool; True swaps in the learned null tokens
        (condition dropout in training, the unconditional branches of guidance); with
        reference tokens, drop_id also hides them from the video.
      ref_kv: the reference tokens' per-block (keys, values) from ``reference_kv``
        (a sampler's cache); None computes them from ``face``.
      guidance_scale: (B, 2) (text, identity) guidance scales of a guidance-distilled
        model (``guidance_embed``); None = (1, 1), the conditional prediction.
      step_size: (B,) the step a shortcut model (``step_embed``) jumps, in model time;
        None = 0, the instantaneous prediction.
      cache: a step-cache mode (static; ``samplers.cached_flow_sample``), else None:
        'indicator': only (B, L, D) block 0's adaLN-modulated input with c = t's
          embedding alone (TeaCache's cheap proxy of how much the blocks' output moves);
        'fill': (output, residual), residual (B, L, D) = the tokens after the last block
          minus those entering the first;
        'skip': the output with the blocks replaced by adding ``residual``;
        'encode': the step-invariant conditions, a dict of text tokens, their mask,
          identity tokens and their share of c, for ``encoded`` (once per sample).
      encoded: 'encode''s dict: 'fill' and 'skip' use it instead of the encoders.
      context / context_mask / context_t: frame conditioning (``model.frame_conditioning``,
        ``diffusion.context``): (B, T, H, W, C) given frames, (B, T) bool which frames
        are given (whole tubelets: a token is context when all its frames are), (B,)
        their noise level (None = 0, clean). The given frames replace x's; their tokens
        carry a learned flag and are modulated with c at ``context_t``.
    Returns:
      (B, T, H, W, C_out) float32, C_out = C (x2 with learned sigma).
    """
    x_bthwc, t_b = x, t
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    if cache not in (None, "indicator", "fill", "skip", "encode"):
      raise ValueError(f"cache={cache!r}: use None, 'indicator', 'fill', 'skip' or 'encode'.")
    if cache == "indicator" and cfg.scan_layers:
      raise ValueError("the step cache's indicator reads block 0's adaLN, which scanned "
                       "blocks do not expose; use model.scan_layers=False or "
                       "--cache_threshold=0.")
    b = x_bthwc.shape[0]
    grid = grid_shape(x_bthwc.shape[1:4], cfg.patch)
    positions = grid_positions(grid)  # (L, 3) in token order
    ctx_mask_bl = None
    if context_mask is not None:
      if not cfg.frame_conditioning:
        raise ValueError("this model was trained without frame conditioning, so it cannot "
                         "take given frames (first frame, extension); train one with "
                         "train.context_rate > 0 (e.g. config arg frame_cond=0.5).")
      x_bthwc = jnp.where(context_mask[:, :, None, None, None],
                          context.astype(x_bthwc.dtype), x_bthwc)
      ctx_mask_bl = jnp.repeat(context_mask.reshape(b, grid[0], cfg.patch[0]).all(-1),
                               grid[1] * grid[2], axis=1)  # (B, L), tokens time-major

    patch_embed = dense(cfg.width, ("patch", "embed"), dt, name="patch_embed")
    x = patch_embed(patchify(x_bthwc, cfg.patch).astype(dt))  # (B, L, D)
    if cfg.frame_conditioning:  # zero-init: joins a trained model as a no-op
      flag = self.param("context_embed", logical(zeros, "embed"), (cfg.width,)).astype(dt)
      if ctx_mask_bl is not None:
        x = x + ctx_mask_bl[..., None].astype(dt) * flag
    if cfg.sincos:
      x = x + sincos_nd(positions, cfg.width).astype(dt)
    x = constrain(x, _ACT)
    angles = rope_angles(positions, cfg.rope_split, cfg.rope_theta) if cfg.rope else None

    t_embed = layers.TimestepEmbedder(cfg.width, dtype=dt, name="t_embed")
    c = c_t = t_embed(t_b)  # (B, D)
    with_context = lambda c: c  # context tokens: c with t_embed(context_t) for t's
    if ctx_mask_bl is not None:
      t_ctx = jnp.zeros_like(t_b) if context_t is None else context_t.astype(t_b.dtype)
      c_ctx_t = t_embed(t_ctx)
      with_context = lambda c: (c, c + (c_ctx_t - c_t), ctx_mask_bl)
    if cache == "indicator":  # given frames do not change: out of the measured change
      h = DiTBlock(cfg, True, block_layout(cfg, 0), grid, name="block_0")(
          x, with_context(c), None, None, None, None, modulated_only=True)[0]
      return h if ctx_mask_bl is None else h * (~ctx_mask_bl)[..., None].astype(h.dtype)
    if cache == "encode":  # the conditions' share of c alone
      c = jnp.zeros_like(c)
    if cfg.guidance_embed and guidance_scale is not None and cache != "encode":
      c = c + layers.ScalarEmbedder(cfg.width, (1.0, 1.0), scale=100.0, dtype=dt,
                                    name="guidance_embed")(guidance_scale)
    if cfg.step_embed and step_size is not None and cache != "encode":
      c = c + layers.ScalarEmbedder(cfg.width, (0.0,), scale=1000.0, dtype=dt,
                                    name="step_embed")(step_size[:, None])

    refs = [None] * cfg.depth
    blocks_run = cache in (None, "fill")  # skipped, only what the final layer's c needs
    if blocks_run and cfg.identity_reference and (face is not None or ref_kv is not None):
      mask = None if drop_id is None else ~drop_id  # a dropped identity hides its tokens
      if ref_kv is not None:
        refs = [dict(kv=kv, mask=mask) for kv in ref_kv]
      else:
        tokens, ref_angles = self._reference(face, x_bthwc.shape[2:4], patch_embed)
        refs[0] = dict(tokens=tokens, c=t_embed(jnp.zeros_like(t_b)), angles=ref_angles,
                       mask=mask, last=cfg.depth == 1)

    text = text_mask_bt = ident = None
    every = cache != "skip"
    if encoded is not None:
      text, text_mask_bt, ident = encoded["text"], encoded["text_mask"], encoded["ident"]
      c = c + encoded["c"]
    if cfg.use_text and encoded is None and (every or cfg.text_pooled_to_adaln):
      text, text_mask_bt, c = self._text(b, text_ids, drop_text, c, text_emb, text_mask,
                                         text_pooled)
    if cfg.use_identity and encoded is None and (every or cfg.identity_pooled_to_adaln):
      ident, c = self._identity(b, face, face_embed, drop_id, c)
    if cache == "encode":
      return dict(text=text, text_mask=text_mask_bt, ident=ident, c=c)
    c = with_context(c)

    block = DiTBlock
    step = _ScanStep
    if cfg.remat != "none":
      block = nn.remat(DiTBlock, policy=REMAT_POLICIES[cfg.remat])
      step = nn.remat(_ScanStep, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
    x_in = x
    if not blocks_run:
      x = constrain(x + residual.astype(dt), _ACT)
    elif cfg.scan_layers:  # parameters stacked along a leading 'layers' axis
      blocks = nn.scan(step, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast,) * 5, length=cfg.depth,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = blocks(cfg, name="blocks")(x, c, angles, text, text_mask_bt, ident)
    else:
      for i in range(cfg.depth):
        x, ref_tokens = block(cfg, i % cfg.identity_every == 0, block_layout(cfg, i), grid,
                              name=f"block_{i}")(x, c, angles, text, text_mask_bt, ident,
                                                 refs[i])
        if ref_tokens is not None:
          refs[i + 1] = dict(refs[i], tokens=ref_tokens, last=i + 2 == cfg.depth)

    out = FinalLayer(cfg, head_out_dim(cfg), name="final")(x, c)  # (B, L, out_dim)
    if cfg.head == "overlap":
      out = overlap_unpatchify(out.astype(jnp.float32), grid, cfg.patch, head_margin(cfg))
    else:
      out = unpatchify(out, grid, cfg.patch).astype(jnp.float32)
    if cfg.skip_sigma_data:  # given frames get the generated ones' t: their output is unused
      c_skip, c_out = schedules.flow_precondition(t_b, cfg.skip_sigma_data)
      b5 = lambda v: v.reshape((b,) + (1,) * 4)
      out = b5(c_skip) * x_bthwc.astype(jnp.float32) + b5(c_out) * out
    return (out, x - x_in) if cache == "fill" else out

  def _reference(self, face_bhwc, frame_hw, patch_embed):
    """In-context reference tokens: the face crop as one clean tubelet-deep frame at the
    video's frame size, embedded like the video, at temporal position -1 (before
    frame 0). -> ((B, H'W', D) tokens, their RoPE angles or None)."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    face = face_bhwc.astype(jnp.float32)
    codec, zoom = None, (1, 1, 1)
    if cfg.reference_codec:  # latents: the face as a clip of the codec's tubelet depth
      from video_dit import pca_codec  # pylint: disable=g-import-not-at-top
      codec = pca_codec.load(cfg.reference_codec)
      zoom = codec.tubelet
    pixel_hw = (frame_hw[0] * zoom[1], frame_hw[1] * zoom[2])
    if face.shape[1:3] != pixel_hw:
      face = jax.image.resize(face, (face.shape[0], *pixel_hw, face.shape[-1]), "bilinear")
    frames = jnp.repeat(face[:, None], cfg.patch[0] * zoom[0], axis=1)  # (B, pt, H, W, C)
    if codec is not None:
      frames = codec.encode(frames)  # (B, pt, H', W', latent channels)
    positions = grid_positions(grid_shape(frames.shape[1:4], cfg.patch)).at[:, 0].set(-1.0)
    tokens = patch_embed(patchify(frames, cfg.patch).astype(dt))
    if cfg.sincos:
      tokens = tokens + sincos_nd(positions, cfg.width).astype(dt)
    angles = rope_angles(positions, cfg.rope_split, cfg.rope_theta) if cfg.rope else None
    return constrain(tokens, _ACT), angles

  def _text(self, b, text_ids_bl, drop_text, c, text_emb_bld=None, text_mask_bl=None,
            text_pooled_bd=None):
    """Text tokens -> width; null tokens where dropped or absent. The trainable encoder
    reads ids; precomputed embeddings (a frozen encoder's) go straight to text_proj."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    null_text = self.param("null_text", logical(nn.initializers.normal(0.02), None, "embed"),
                           (cfg.text.max_len, cfg.width))
    pooled = None
    if cfg.text_precomputed_dim:
      if text_emb_bld is None:
        drop_text = jnp.ones((b,), bool)
        text_emb_bld = jnp.zeros((b, cfg.text.max_len, cfg.text_precomputed_dim), dt)
        text_mask_bl = jnp.zeros((b, cfg.text.max_len), bool).at[:, 0].set(True)
        text_pooled_bd = jnp.zeros((b, cfg.text_precomputed_dim), dt)
      text_emb, text_mask = text_emb_bld.astype(dt), text_mask_bl.astype(bool)
      if text_pooled_bd is not None:
        pooled = dense(cfg.width, (None, "embed"), dt, name="text_pooled_proj")(
            text_pooled_bd.astype(dt))
    else:
      if text_ids_bl is None:
        drop_text = jnp.ones((b,), bool)
        text_ids_bl = jnp.zeros((b, cfg.text.max_len), jnp.int32)
      text_emb, text_mask = TextEncoder(cfg.text, dt, cfg.attention, name="text_encoder")(
          text_ids_bl)
    text = layers.Mlp(cfg.width, cfg.width, dt, name="text_proj")(text_emb)  # (B, Lt, D)
    if drop_text is not None:
      drop = drop_text[:, None]
      text = jnp.where(drop[..., None], null_text[:text.shape[1]].astype(dt), text)
      text_mask = text_mask | drop
      if pooled is not None:
        pooled = jnp.where(drop, 0, pooled)
    text = constrain(text, ("act_batch", "act_text_len", "act_embed"))
    if cfg.text_pooled_to_adaln:
      mean = _masked_mean(text, text_mask).astype(dt)
      c = c + dense(cfg.width, ("embed", "mlp"), dt, name="text_pool")(
          mean if pooled is None else mean + pooled)
    return text, text_mask, c

  def _identity(self, b, face_bhwc, face_embed_be, drop_id, c):
    """K tokens from the reference face; null tokens where dropped or absent."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    null_id = self.param("null_id", logical(nn.initializers.normal(0.02), None, "embed"),
                         (cfg.identity.num_tokens, cfg.width))
    if face_bhwc is None and face_embed_be is None:
      ident = jnp.broadcast_to(null_id.astype(dt), (b,) + null_id.shape)
    else:
      ident = IdentityEncoder(cfg.identity, cfg.width, dt, cfg.attention,
                              name="identity_encoder")(face_bhwc, face_embed_be)
      if drop_id is not None:
        ident = jnp.where(drop_id[:, None, None], null_id.astype(dt), ident)
    ident = constrain(ident, ("act_batch", "act_id_len", "act_embed"))
    if cfg.identity_pooled_to_adaln:
      c = c + dense(cfg.width, ("embed", "mlp"), dt, name="id_pool")(ident.mean(1))
    return ident, c


def block_layout(cfg: ModelConfig, i: int) -> str:
  """Block i's self-attention: 'full', or with a factorised layout 'spatial' (even i,
  within each frame) and 'temporal' (odd i, across frames), as Latte alternates them."""
  if cfg.attention_layout == "full":
    return "full"
  return "spatial" if i % 2 == 0 else "temporal"


def head_margin(cfg: ModelConfig) -> tuple[int, int, int]:
  """Frames and pixels an output window reaches beyond its tubelet on each side
  (t, h, w)."""
  if cfg.head != "overlap":
    return 0, 0, 0
  ph, pw = cfg.patch[1:]
  return cfg.head_margin_t, (cfg.head_margin or ph // 2), (cfg.head_margin or pw // 2)


def head_out_dim(cfg: ModelConfig) -> int:
  """Values the final layer writes per token: its (pt + 2mt, ph + 2mh, pw + 2mw) window."""
  window = [p + 2 * m for p, m in zip(cfg.patch, head_margin(cfg))]
  return window[0] * window[1] * window[2] * cfg.channels * (2 if cfg.learn_sigma else 1)


def _ramp(p: int, m: int) -> np.ndarray:
  """Weights over a window of p + 2m pixels: 1 on the tubelet's inner p - 2m pixels,
  falling linearly to 0 over the 2m pixels at each edge, where the neighbour's rises: two
  neighbouring windows' weights sum to 1 (m = p/2: a triangle over 2p pixels; m = 0: 1)."""
  if not m:
    return np.ones((p,), np.float32)
  u = np.arange(p + 2 * m, dtype=np.float32) + 0.5
  return np.clip(np.minimum(u, p + 2 * m - u) / (2 * m), 0.0, 1.0)


def overlap_unpatchify(tokens_bld, grid, patch, margin) -> jnp.ndarray:
  """(B, L, (pt+2mt)*(ph+2mh)*(pw+2mw)*C) -> (B, T, H, W, C): token (s, i, j) paints the
  window [s pt - mt, (s+1) pt + mt) x [i ph - mh, (i+1) ph + mh) x [j pw - mw, ...)
  (centred on its tubelet), weighted by a separable ramp. Every voxel is the weighted mean
  of the windows that cover it, so the output is continuous across token borders; where
  the video's edges cut windows the weights are renormalised. Needs 0 <= m <= p/2 on
  each axis (0: no overlap on that axis).

  The weights and their normalisation are separable, so each axis is one small matmul
  with a fixed (pixels, tokens, window) map (``overlap_axis_map``): height, width, and
  time where mt > 0. Counted in ``flops.forward_flops`` (``overlap_head_flops``)."""
  b, length, d = tokens_bld.shape
  k = [p + 2 * m for p, m in zip(patch, margin)]
  c = d // (k[0] * k[1] * k[2])
  if (length != grid[0] * grid[1] * grid[2] or d != k[0] * k[1] * k[2] * c
      or any(not 0 <= m <= p // 2 for p, m in zip(patch, margin))):
    raise ValueError(f"tokens of shape {tokens_bld.shape} do not fit grid {tuple(grid)} "
                     f"with tubelet {tuple(patch)} and margins {tuple(margin)}")
  axis_map = lambda i: jnp.asarray(overlap_axis_map(grid[i], patch[i], margin[i]))
  mm = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)
  x = tokens_bld.reshape(b, *grid, *k, c)          # (B, s, i, j, t, a, e, C)
  x = mm("bsijtaec,yia->bsjtyec", x, axis_map(1))  # height
  x = mm("bsjtyec,xje->bstyxc", x, axis_map(2))    # width
  if margin[0]:
    return mm("bstyxc,zst->bzyxc", x, axis_map(0))  # time
  return x.reshape(b, grid[0] * patch[0], *x.shape[3:])


def overlap_axis_map(n: int, p: int, m: int) -> np.ndarray:
  """(n p, n, p + 2m) float32: pixel y of an axis of n tubelets of p takes position a of
  token i's window with the window's ramp weight (``_ramp``), normalised over the windows
  that cover y (a window's part beyond the video's edge is dropped)."""
  pix = np.arange(n)[:, None] * p - m + np.arange(p + 2 * m)[None, :]   # (n, p + 2m)
  i, a = np.nonzero((pix >= 0) & (pix < n * p))
  out = np.zeros((n * p, n, p + 2 * m), np.float32)
  out[pix[i, a], i, a] = _ramp(p, m)[a]
  return out / out.sum((1, 2), keepdims=True)


def overlap_head_flops(grid, patch, margin, channels: int) -> int:
  """The matmul FLOPs of ``overlap_unpatchify`` for one example."""
  (gt, gh, gw), (pt, ph, pw) = grid, patch
  kt, kh, kw = (p + 2 * m for p, m in zip(patch, margin))
  height = gt * gw * kt * gh * ph * kw * channels * gh * kh
  width = gt * kt * gh * ph * gw * pw * channels * gw * kw
  time = gt * pt * gh * ph * gw * pw * channels * gt * kt if margin[0] else 0
  return 2 * (height + width + time)


def patchify_dim(cfg: ModelConfig) -> int:
  pt, ph, pw = cfg.patch
  return pt * ph * pw * cfg.channels


def reference_kv(model: VideoDiT, params, x, t, cond: dict):
  """The reference tokens' per-block (keys, values), or None without reference tokens.

  They depend on the face crop and the parameters only (the tokens are clean and attend
  to themselves alone), so a sampler computes them once per sample and passes them to
  every step as ``ref_kv``; ``x`` and ``t`` only fix the shapes of this one pass.
  """
  if not model.cfg.identity_reference or cond.get("face") is None:
    return None
  cond = {k: v for k, v in cond.items() if k != "ref_kv"}
  _, state = model.apply(params, x, t, **cond, mutable=["intermediates"])
  blocks = state["intermediates"]
  return [blocks[f"block_{i}"]["ref_kv"][0] for i in range(model.cfg.depth)]
