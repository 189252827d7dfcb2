"""Caption embeddings of a frozen text encoder, stored with the dataset.

``text_<encoder>.npz`` in the dataset's version folder holds one row per distinct
caption of every split (captions repeat across clips):

  captions  (N,) unicode        tokens  (N, max_len, E) float16 (zero past the mask)
  mask      (N, max_len) bool   pooled  (N, E) float32 (mean-pooled, L2-normalised)

``build`` writes it atomically (``tools.make_dataset ... --text_encoder=minilm``, or on
first use); ``TextStore`` looks captions up for the input pipeline. The file is read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import os

import numpy as np

from video_dit.data import builders

ENCODERS = ("minilm",)


def store_path(data_dir: str, encoder: str) -> str:
  return os.path.join(builders.find_dataset(data_dir), f"text_{encoder}.npz")


def encode(encoder: str, texts: list[str], max_len: int):
  """texts -> (tokens, mask, pooled) of the named frozen encoder."""
  if encoder not in ENCODERS:
    raise ValueError(f"text encoder '{encoder}' is unknown; use one of {ENCODERS}")
  from video_dit.models import text  # pylint: disable=g-import-not-at-top
  return text.minilm()(texts, max_len)


def as_stored(tokens, mask, pooled) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """An encoder's outputs at the precision the store keeps them: float16 tokens, bool
  mask, float32 pooled (prompts encoded at sampling time get the same rounding)."""
  return (np.asarray(tokens).astype(np.float16), np.asarray(mask).astype(bool),
          np.asarray(pooled).astype(np.float32))


def dataset_captions(data_dir: str) -> list[str]:
  """Every distinct caption of every split, sorted."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(builders.find_dataset(data_dir))
  captions = set()
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    for i in range(len(source)):
      c = source[i]["caption"]
      captions.add(c.decode() if isinstance(c, bytes) else str(c))
  return sorted(captions)


def build(data_dir: str, encoder: str = "minilm", max_len: int = 32,
          force: bool = False) -> str:
  """Encodes every caption of the dataset once; returns the store's path."""
  path = store_path(data_dir, encoder)
  if os.path.exists(path) and not force:
    with np.load(path, allow_pickle=False) as f:
      if f["mask"].shape[1] == max_len:
        return path
  captions = dataset_captions(data_dir)
  tokens, mask, pooled = as_stored(*encode(encoder, captions, max_len))
  tmp = path + ".tmp.npz"
  np.savez(tmp, captions=np.asarray(captions, dtype=str), tokens=tokens, mask=mask,
           pooled=pooled)
  os.replace(tmp, path)  # atomic: a crash leaves the old store (or none)
  return path


class TextStore:
  """The stored embeddings of every caption of a dataset, looked up by caption."""

  def __init__(self, data_dir: str, encoder: str, max_len: int):
    path = store_path(data_dir, encoder)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} is missing: the dataset has no stored '{encoder}' caption embeddings; "
          f"add them with `python -m tools.make_dataset embed --data_dir={data_dir} "
          f"--text_encoder={encoder}` (or use text.encoder='trainable')")
    with np.load(path, allow_pickle=False) as f:
      self.tokens, self.mask, self.pooled = f["tokens"], f["mask"], f["pooled"]
      captions = [str(c) for c in f["captions"]]
    if self.mask.shape[1] != max_len:
      raise ValueError(f"{path} stores {self.mask.shape[1]} tokens per caption but "
                       f"text.max_len={max_len}; set text.max_len={self.mask.shape[1]} or "
                       "rebuild the store with --text_max_len")
    self.index = {c: i for i, c in enumerate(captions)}
    self.path = path

  def lookup(self, caption: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The caption's stored (tokens (L, E) float16, mask (L,), pooled (E,) float32);
    ``conditions.caption_fields`` turns them into the batch's text fields."""
    i = self.index.get(caption)
    if i is None:
      raise KeyError(f"caption {caption!r} is not in {self.path}; rebuild it with "
                     "`python -m tools.make_dataset embed ...`")
    return self.tokens[i], self.mask[i], self.pooled[i]
