"""Text encoders: ``token ids (B, L) -> (embeddings (B, L, D), mask (B, L))``.

The trainable encoder here is a small transformer over token ids, trained with
the DiT (tests, tiny configs). Any encoder with the same interface (a frozen
pretrained one, or embeddings precomputed into the dataset) can replace it.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from video_dit.models import layers


class HashTokenizer:
  """The trainable encoder's tokenizer: lower-cased words and punctuation, each
  hashed (crc32) into [1, vocab_size); 0 pads. Stable across runs and machines,
  needs no vocabulary file; rare collisions only merge two words."""

  def __init__(self, vocab_size: int, max_len: int, pad_id: int = 0):
    if vocab_size < 2:
      raise ValueError(f"text.vocab_size={vocab_size} must be >= 2")
    self.vocab_size, self.max_len, self.pad_id = vocab_size, max_len, pad_id

  def words(self, text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """(N,) strings -> (N, max_len) int32 ids, truncated and padded."""
    ids = np.full((len(texts), self.max_len), self.pad_id, np.int32)
    for i, text in enumerate(texts):
      for j, word in enumerate(self.words(text)[:self.max_len]):
        ids[i, j] = 1 + zlib.crc32(word.encode()) % (self.vocab_size - 1)
    return ids


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  vocab_size: int = 1024
  max_len: int = 32
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  pad_id: int = 0


class TextEncoder(nn.Module):
  """Token embedding + learned positions + pre-LN transformer layers (key-masked)."""
  config: TextEncoderConfig
  dtype: layers.Dtype = jnp.float32
  impl: str = "einsum"

  @nn.compact
  def __call__(self, ids_bl):
    cfg = self.config
    length = ids_bl.shape[1]
    if length > cfg.max_len:
      raise ValueError(f"text of {length} tokens exceeds text.max_len={cfg.max_len}; "
                       "truncate the prompt or raise text.max_len.")
    mask_bl = ids_bl != cfg.pad_id
    x = nn.Embed(cfg.vocab_size, cfg.width, dtype=self.dtype,
                 embedding_init=layers.logical(nn.initializers.normal(0.02), "vocab", "embed"),
                 name="token_embed")(ids_bl)
    pos = self.param("pos_embed", layers.logical(nn.initializers.normal(0.02), None, "embed"),
                     (cfg.max_len, cfg.width))
    x = x + pos[:length].astype(x.dtype)
    for i in range(cfg.depth):
      x = layers.EncoderLayer(cfg.num_heads, cfg.mlp_ratio, self.dtype, self.impl,
                              name=f"layer_{i}")(x, mask_bl)
    return layers.layer_norm(self.dtype, name="norm")(x), mask_bl
