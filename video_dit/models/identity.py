"""Identity encoder: one reference face -> K identity tokens.

Two optional inputs, concatenated as context for a Perceiver resampler:
  * a face crop (B, S, S, 3) in [-1, 1] through a small ViT;
  * an external face-embedding vector (B, E), e.g. a 128-d face-recognition
    descriptor, projected to a few tokens.
The resampler's K learned latents cross-attend to [context; latents] (as in
Flamingo), so K is fixed whatever the inputs; its output is projected to the
DiT width.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from video_dit.models import attention, layers
from video_dit.models.patching import grid_positions, patchify
from video_dit.models.rope import sincos_nd


@dataclasses.dataclass(frozen=True)
class IdentityEncoderConfig:
  face_size: int = 32         # face crop side; 0 disables the image branch
  face_patch: int = 8
  embed_dim: int = 0          # external embedding size; 0 disables that branch
  embed_tokens: int = 4       # tokens made from the external embedding
  width: int = 128
  depth: int = 2              # ViT layers
  num_heads: int = 4
  num_tokens: int = 8         # K, identity tokens out of the resampler
  resampler_depth: int = 2
  mlp_ratio: float = 4.0


class PerceiverLayer(nn.Module):
  num_heads: int
  mlp_ratio: float
  dtype: layers.Dtype
  impl: str

  @nn.compact
  def __call__(self, latents_bkd, context_bnd):
    norm = lambda name: layers.layer_norm(self.dtype, axis_name="id_embed", name=name)
    q = norm("norm_latents")(latents_bkd)
    kv = jnp.concatenate([norm("norm_context")(context_bnd), q], axis=1)
    latents_bkd = latents_bkd + attention.CrossAttention(
        self.num_heads, self.dtype, self.impl, "id_embed", name="attn")(q, kv)
    h = norm("norm_mlp")(latents_bkd)
    return latents_bkd + layers.Mlp(int(latents_bkd.shape[-1] * self.mlp_ratio),
                                    dtype=self.dtype, embed_axis="id_embed", name="mlp")(h)


class IdentityEncoder(nn.Module):
  """(face crop and/or face embedding) -> identity tokens (B, K, out_dim)."""
  config: IdentityEncoderConfig
  out_dim: int
  dtype: layers.Dtype = jnp.float32
  impl: str = "einsum"

  @nn.compact
  def __call__(self, face_bhwc=None, face_embed_be=None):
    cfg = self.config
    context = []
    if cfg.face_size:
      if face_bhwc is None:
        raise ValueError("the identity encoder has an image branch "
                         f"(identity.face_size={cfg.face_size}) but no face image was given")
      if face_bhwc.shape[1:3] != (cfg.face_size, cfg.face_size):
        raise ValueError(f"face crop of shape {face_bhwc.shape[1:3]} does not match "
                         f"identity.face_size={cfg.face_size}; resize the crop.")
      p = cfg.face_patch
      tokens = patchify(face_bhwc[:, None].astype(self.dtype), (1, p, p))  # (B, N, p*p*3)
      x = layers.dense(cfg.width, ("patch", "id_embed"), self.dtype, name="patch_embed")(tokens)
      grid = (cfg.face_size // p, cfg.face_size // p)
      x = x + sincos_nd(grid_positions((1,) + grid)[:, 1:], cfg.width).astype(x.dtype)
      for i in range(cfg.depth):
        x = attention.EncoderLayer(cfg.num_heads, cfg.mlp_ratio, self.dtype, self.impl,
                                "id_embed", name=f"vit_{i}")(x)
      context.append(layers.layer_norm(self.dtype, axis_name="id_embed", name="vit_norm")(x))
    if cfg.embed_dim:
      if face_embed_be is None:
        raise ValueError("the identity encoder has an embedding branch "
                         f"(identity.embed_dim={cfg.embed_dim}) but no face embedding was given")
      e = layers.dense((cfg.embed_tokens, cfg.width), (None, None, "id_embed"), self.dtype,
                       name="embed_proj")(face_embed_be.astype(self.dtype))
      context.append(layers.layer_norm(self.dtype, axis_name="id_embed", name="embed_norm")(e))
    context = jnp.concatenate(context, axis=1)  # (B, N, width)

    latents = self.param("latents", layers.logical(nn.initializers.normal(0.02), None, "id_embed"),
                         (cfg.num_tokens, cfg.width))
    x = jnp.broadcast_to(latents.astype(self.dtype), (context.shape[0],) + latents.shape)
    for i in range(cfg.resampler_depth):
      x = PerceiverLayer(cfg.num_heads, cfg.mlp_ratio, self.dtype, self.impl,
                         name=f"resampler_{i}")(x, context)
    x = layers.layer_norm(self.dtype, axis_name="id_embed", name="out_norm")(x)
    return layers.dense(self.out_dim, ("id_embed", "embed"), self.dtype, name="out")(x)
