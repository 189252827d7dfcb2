"""Analytic matmul FLOPs of a VideoDiT forward pass (2 * M * N * K per matmul).

Counts every dense layer and attention product, not elementwise work; a
training step costs about 3x the forward (forward + two matmuls per backward).
XLA's own count of a compiled step (``compiled.cost_analysis()``) also includes
elementwise work, so the two differ most on tiny models.
"""

from __future__ import annotations

import dataclasses
import re

from video_dit.models.dit import (ModelConfig, block_layout, head_margin, head_out_dim,
                                  overlap_head_flops, patchify_dim)


def _encoder_layer(n, d, r):
  """Pre-LN self-attention + MLP layer over n tokens of width d."""
  return 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * int(r * d)


def _cross(lq, lk, d_q, d_kv):
  """q from lq tokens, k/v from lk tokens (width d_kv), output back to d_q."""
  return 2 * lq * d_q * d_q + 4 * lk * d_kv * d_q + 4 * lq * lk * d_q + 2 * lq * d_q * d_q


def forward_flops(cfg: ModelConfig, video_shape, text_len: int) -> int:
  """Matmul FLOPs of one forward pass for ONE sample of ``video_shape`` (T, H, W, C)."""
  t, h, w = video_shape[:3]
  pt, ph, pw = cfg.patch
  n = (t // pt) * (h // ph) * (w // pw)
  d, r, k = cfg.width, cfg.mlp_ratio, cfg.identity.num_tokens
  p = patchify_dim(cfg)
  total = 2 * n * p * d + 2 * 256 * d + 2 * d * d  # patch embed, timestep MLP

  tx = cfg.text
  if not cfg.use_text:
    text_len = 0
  if cfg.text_precomputed_dim:  # frozen embeddings from the dataset: no encoder here
    total += 2 * text_len * cfg.text_precomputed_dim * d + 2 * text_len * d * d  # text_proj
    total += 2 * cfg.text_precomputed_dim * d if cfg.use_text else 0  # pooled projection
  else:
    total += sum(_encoder_layer(text_len, tx.width, tx.mlp_ratio) for _ in range(tx.depth))
    total += 2 * text_len * tx.width * d + 2 * text_len * d * d  # text_proj MLP
  total += 2 * d * d if cfg.text_pooled_to_adaln and cfg.use_text else 0

  idc = cfg.identity
  ctx = 0
  if not cfg.use_identity:
    idc = dataclasses.replace(idc, face_size=0, embed_dim=0, resampler_depth=0, num_tokens=0)
    k = 0
  if idc.face_size:
    ctx = (idc.face_size // idc.face_patch) ** 2
    total += 2 * ctx * idc.face_patch ** 2 * 3 * idc.width
    total += idc.depth * _encoder_layer(ctx, idc.width, idc.mlp_ratio)
  if idc.embed_dim:
    ctx += idc.embed_tokens
    total += 2 * idc.embed_dim * idc.embed_tokens * idc.width
  total += idc.resampler_depth * (_cross(k, ctx + k, idc.width, idc.width)
                                  + 4 * k * idc.width * int(idc.mlp_ratio * idc.width))
  total += 2 * k * idc.width * d
  total += 2 * d * d if cfg.identity_pooled_to_adaln and cfg.use_identity else 0

  lr = 0  # in-context reference tokens: one tubelet-deep frame of the face
  if cfg.identity_reference:
    lr = (h // ph) * (w // pw)
    total += 2 * lr * p * d + 2 * 256 * d + 2 * d * d            # patch embed, t=0 embed
    total += cfg.depth * (2 * d * 6 * d + 2 * lr * d * 3 * d)    # their adaLN, q/k/v
    total += (cfg.depth - 1) * (4 * lr * lr * d + 2 * lr * d * d  # attention and MLP
                                + 4 * lr * d * int(r * d))       # (not in the last block)
  keys = dict(full=n, spatial=(h // ph) * (w // pw), temporal=t // pt)  # per query
  for i in range(cfg.depth):
    total += 2 * d * 6 * d                                       # adaLN
    nk = keys[block_layout(cfg, i)]
    total += 2 * n * d * 3 * d + 4 * n * nk * d + 2 * n * d * d  # self-attention
    total += 4 * n * lr * d                                      # ... over reference keys
    total += _cross(n, text_len, d, d) if cfg.use_text else 0    # text cross-attention
    if cfg.use_identity and i % cfg.identity_every == 0:
      if cfg.identity_mode == "decoupled":
        total += 4 * k * d * d + 4 * n * k * d                   # extra k/v + attention
      else:
        total += _cross(n, k, d, d)                              # identity cross-attention
    total += 4 * n * d * int(r * d)                              # MLP
  out = head_out_dim(cfg)
  total += 2 * d * 2 * d + 2 * n * d * out                       # final layer
  if cfg.head == "overlap":                                      # its windows -> pixels
    grid = (t // pt, h // ph, w // pw)
    total += overlap_head_flops(grid, cfg.patch, head_margin(cfg),
                                cfg.channels * (2 if cfg.learn_sigma else 1))
  return int(total)


def num_tokens(cfg: ModelConfig, video_shape) -> int:
  t, h, w = video_shape[:3]
  pt, ph, pw = cfg.patch
  return (t // pt) * (h // ph) * (w // pw)


_DOT = re.compile(r"stablehlo\.dot_general .*?contracting_dims = \[([\d, ]*)\] x .*?"
                  r": \(tensor<([\dx]+)x\w+>, tensor<[^>]+>\) -> tensor<([\dx]*)x?\w+>")


def traced_matmul_flops(lowered) -> int:
  """2 * M * N * K summed over every dot in a lowered program (``jax.jit(f).lower(...)``),
  loop bodies counted once per appearance. Unlike XLA's cost analysis of the compiled
  program it counts matmuls only (no elementwise work), so it is what ``forward_flops``
  predicts; like it, a ``lax.scan`` body appears once however many steps it runs."""
  total = 0
  for m in _DOT.finditer(lowered.as_text()):
    contracting = [int(i) for i in m.group(1).replace(" ", "").split(",") if i]
    lhs = [int(s) for s in m.group(2).split("x")]
    out = [int(s) for s in m.group(3).split("x") if s]
    k = 1
    for i in contracting:
      k *= lhs[i]
    n = 1
    for s in out:
      n *= s
    total += 2 * n * k
  return total
