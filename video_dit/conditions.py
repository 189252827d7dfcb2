"""The model's conditions, named once: the input pipeline's batch fields are the
VideoDiT's call arguments.

  video        (B, T, H, W, C) in [-1, 1] (or normalised latents)  the clean x0
  text_ids     (B, Lt) int32   hashed caption words        text.encoder='trainable'
  text_emb     (B, Lt, E)      a frozen encoder's tokens   text.encoder='precomputed'
  text_mask    (B, Lt) bool    its valid tokens
  text_pooled  (B, E)          its pooled sentence vector
  face         (B, S, S, 3)    reference face crop in [-1, 1]
  face_embed   (B, E)          an external face embedding (identity.embed_dim)
  drop_text / drop_id  (B,) bool   set by training (condition dropout) and guidance
  context / context_mask / context_t   given frames (frame conditioning,
                                       ``video_dit/diffusion/context.py``)

Caption -> text fields live here for everyone: ``caption_fields(config)`` maps one
caption for the pipeline (hashed ids, or the dataset's stored MiniLM embeddings), and
``prompt_fields(config, prompts)`` maps new prompts at sampling time to the same
fields with the same rounding as the stored ones (float16 tokens).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from video_dit.data import text_store
from video_dit.models.text import HashTokenizer

TEXT_FIELDS = ("text_ids", "text_emb", "text_mask", "text_pooled")
FACE_FIELDS = ("face", "face_embed")
DROP_FIELDS = ("drop_text", "drop_id")
CONTEXT_FIELDS = ("context", "context_mask", "context_t")
COND_FIELDS = TEXT_FIELDS + FACE_FIELDS + DROP_FIELDS + CONTEXT_FIELDS


def split_batch(batch: dict) -> tuple[object, dict]:
  """A pipeline batch -> (clean video x0, the model's conditions)."""
  return batch["video"], {k: batch[k] for k in COND_FIELDS if k in batch}


def _text_fields(tokens, mask, pooled) -> dict[str, np.ndarray]:
  """A frozen encoder's stored outputs (``text_store.as_stored``) as the model's fields."""
  return dict(text_emb=np.asarray(tokens, np.float32), text_mask=np.asarray(mask, bool),
              text_pooled=np.asarray(pooled, np.float32))


def caption_fields(config) -> Callable[[str], dict[str, np.ndarray]]:
  """caption -> that caption's text fields (no batch axis), for the input pipeline."""
  t = config.text
  if t.encoder == "precomputed":
    store = text_store.TextStore(config.data.data_dir, t.precomputed, t.max_len)
    return lambda caption: _text_fields(*store.lookup(caption))
  if t.encoder == "none":
    return lambda caption: {}
  tokenizer = HashTokenizer(t.vocab_size, t.max_len)
  return lambda caption: dict(text_ids=tokenizer([caption])[0])


def prompt_fields(config, prompts: list[str]) -> dict[str, np.ndarray]:
  """New prompts -> a batch of text fields, as the pipeline would give for them."""
  t = config.text
  if t.encoder == "precomputed":
    return _text_fields(*text_store.as_stored(
        *text_store.encode(t.precomputed, prompts, t.max_len)))
  if t.encoder == "none":
    return {}
  return dict(text_ids=HashTokenizer(t.vocab_size, t.max_len)(prompts))


def prompt_tokens(config, prompt: str) -> int:
  """How many tokens the text encoder makes of ``prompt`` before truncation to
  ``text.max_len`` (0 without a text encoder)."""
  t = config.text
  if t.encoder == "precomputed":
    from video_dit.models import text  # pylint: disable=g-import-not-at-top
    tokenizer = text.minilm().tokenizer
    tokenizer.no_truncation()
    return len(tokenizer.encode(prompt).ids)
  if t.encoder == "none":
    return 0
  return len(HashTokenizer(t.vocab_size, t.max_len).words(prompt))
