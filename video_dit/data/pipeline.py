"""The input pipeline: grain over a TFDS ArrayRecord source -> sharded global batches.

    source (tfds.data_source) -> this process's shard [i::n] -> shuffle(seed)
    -> repeat (re-shuffled each epoch) -> decode + clip + resize + tokenize
    (a per-record RNG from the seed) -> batch -> prefetch threads

Records are kept decoded in memory (``DecodedCache``, up to ``data.cache_mb``), so a
small dataset is decoded in its first epoch only, not in every one.

Everything is a deterministic function of (seed, record index), so a resumed
iterator (``get_state`` / ``set_state``, saved with the checkpoint) yields
exactly the batches an uninterrupted run would. Videos and images (T = 1) take
the same path. Each process reads only its own shard; ``sharding.shard_batch``
assembles the processes' local batches into global arrays over ('data', 'fsdp').
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

import grain
import jax
import jax.experimental.multihost_utils
import numpy as np
from PIL import Image

from video_dit import conditions, video_io
from video_dit.data import builders, synthetic, text_store
from video_dit.models import registry


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What one training example looks like after the pipeline."""
  frames: int
  height: int
  width: int
  stride: int = 1
  face_size: int = 64
  random_clip: bool = True    # random start and crop (train) vs first frames, centre (eval)
  latents: bool = False       # a latent cache: 'video' is the stored (normalised) latents

  @classmethod
  def from_config(cls, config, train: bool = True) -> "ClipSpec":
    d = config.data
    latents = "latent" in config and config.latent.source == "cache"
    return cls(frames=d.frames, height=d.height, width=d.width, stride=d.stride,
               face_size=config.identity.face_size or 64, random_clip=train and not latents,
               latents=latents)


def _resize_crop(frames_thwc: np.ndarray, h: int, w: int, rng) -> np.ndarray:
  """Scales so (h, w) fits inside, then crops (h, w): random offset with rng, else centre."""
  fh, fw = frames_thwc.shape[1:3]
  if (fh, fw) != (h, w):
    scale = max(h / fh, w / fw)
    size = (max(w, round(fw * scale)), max(h, round(fh * scale)))
    frames_thwc = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR))
                            for f in frames_thwc])
  fh, fw = frames_thwc.shape[1:3]
  top = int(rng.integers(fh - h + 1)) if rng is not None else (fh - h) // 2
  left = int(rng.integers(fw - w + 1)) if rng is not None else (fw - w) // 2
  return frames_thwc[:, top:top + h, left:left + w]


def _decoded(images) -> bool:
  """Whether a record's images are pixels already (``DecodedCache``), not encoded bytes."""
  return isinstance(images, np.ndarray) and images.dtype == np.uint8


class DecodeExample(grain.transforms.RandomMap):
  """Record -> {'video', 'face', text fields, 'identity_index', 'action'} as numpy
  (the fields ``video_dit.conditions`` names; ``text_fn`` maps the caption)."""

  def __init__(self, spec: ClipSpec, text_fn):
    self.spec, self.text_fn = spec, text_fn

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    spec = self.spec
    if spec.latents:
      if "latents" not in record:
        raise ValueError("latent.source='cache' but the dataset has no latents; point "
                         "data.data_dir at a cache made by tools.encode_latents")
      video = builders.decode_latents(record)
    else:
      video = self.clip(record, rng)
    face = record["face"]
    if not _decoded(face):
      face = video_io.decode_image(face)
    if face.shape[:2] != (spec.face_size, spec.face_size):
      face = np.asarray(Image.fromarray(face).resize((spec.face_size,) * 2, Image.BICUBIC))
    caption = record["caption"]
    caption = caption.decode() if isinstance(caption, bytes) else str(caption)
    return dict(video=video, face=video_io.to_unit(face), **self.text_fn(caption),
                identity_index=np.int32(record["identity_index"]),
                action=np.int32(record["action"]))

  def clip(self, record: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The record's clip as float32 pixels in [-1, 1]."""
    spec = self.spec
    n = len(record["frames"])
    span = (spec.frames - 1) * spec.stride + 1
    start = int(rng.integers(max(1, n - span + 1))) if spec.random_clip else 0
    # A clip shorter than asked repeats its last frame (the builder's min_frames avoids it).
    indices = np.minimum(start + spec.stride * np.arange(spec.frames), n - 1)
    frames = record["frames"]
    video = frames[indices] if _decoded(frames) else video_io.decode_frames(frames, indices)
    video = _resize_crop(video, spec.height, spec.width, rng if spec.random_clip else None)
    return video_io.to_unit(video)


class DecodedCache:
  """A random-access source whose records are kept with their images decoded (uint8
  ``frames`` (T, H, W, 3) and ``face``), up to ``max_bytes`` of decoded pixels. Once a
  record does not fit, the cache is full: later records are read as they are and
  ``DecodeExample`` decodes only the frames it takes, as without the cache.

  Decoding PNG frames is most of the pipeline's work, and on a small machine it runs on
  the cores the train step uses: the quickstart's 3200 training clips (88 MB decoded)
  are decoded once instead of once per epoch. Decoded values are those
  ``DecodeExample`` would decode, so batches are unchanged. Shared by the prefetch
  threads of one pipeline (each ``make_dataset`` call has its own).

  ``frames=False`` (a latent cache, whose stored pixels the DiT never reads) and records
  of more than ``max_frames`` frames (a long real clip, of which a training clip takes a
  few) pass through uncached: what the cache holds is what its budget counts.
  """

  def __init__(self, source, max_bytes: int, frames: bool = True, max_frames: int = 0):
    self._source, self._max_bytes = source, int(max_bytes)
    self._frames, self._max_frames = frames, max_frames
    self._records: dict[int, dict[str, Any]] = {}
    self._lock = threading.Lock()
    self.cached_bytes, self.full = 0, False

  def __len__(self) -> int:
    return len(self._source)

  @staticmethod
  def nbytes(record: dict[str, Any]) -> int:
    return sum(v.nbytes for v in record.values() if _decoded(v))

  def __getitem__(self, index):
    index = int(index)
    record = self._records.get(index)
    if record is not None:
      return record
    record = self._source[index]
    if (self.full or not self._frames or "frames" not in record
        or (self._max_frames and len(record["frames"]) > self._max_frames)):
      return record
    decoded = dict(record, frames=video_io.decode_frames(record["frames"]))
    if "face" in record:
      decoded["face"] = video_io.decode_image(record["face"])
    size = self.nbytes(decoded)
    with self._lock:
      if self.cached_bytes + size > self._max_bytes:
        self.full = True
      elif index not in self._records:
        self._records[index] = decoded
        self.cached_bytes += size
    return decoded


def centre_clip(record: dict[str, Any], frames: int, height: int, width: int) -> np.ndarray:
  """A record's first ``frames`` frames, centre-cropped to (height, width), in [-1, 1]:
  the clip the eval pipeline decodes (what a latent cache encodes)."""
  spec = ClipSpec(frames=frames, height=height, width=width, random_clip=False)
  return DecodeExample(spec, lambda caption: {}).clip(record, None)


def make_dataset(config, split: str = "train", *, train: bool = True,
                 process_index: int | None = None, process_count: int | None = None,
                 source=None) -> grain.MapDataset:
  """The per-process MapDataset of batches (infinite when ``train``)."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch = config.data.batch_size
  if batch % process_count:
    raise ValueError(f"data.batch_size={batch} is not divisible by the {process_count} "
                     "processes; use a multiple.")
  source = builders.data_source(config.data.data_dir, split) if source is None else source
  spec = ClipSpec.from_config(config, train)
  if config.data.get("cache_mb", 0) > 0:
    source = DecodedCache(source, config.data.cache_mb * 2 ** 20, frames=not spec.latents,
                          max_frames=4 * ((spec.frames - 1) * spec.stride + 1))
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError(f"process {process_index} of {process_count} has no records of split "
                     f"'{split}' ({len(source)} in all)")
  if train:
    ds = ds.shuffle(seed=config.seed).repeat(None)
  ds = ds.random_map(DecodeExample(spec, conditions.caption_fields(config)),
                     seed=config.seed)
  return ds.batch(batch // process_count, drop_remainder=train)


def make_iterator(config, split: str = "train", *, train: bool = True,
                  **kwargs) -> grain.DatasetIterator:
  """A prefetching iterator over local batches; ``get_state()`` / ``set_state()``
  give a JSON-able position that resumes exactly."""
  ds = make_dataset(config, split, train=train, **kwargs)
  options = grain.ReadOptions(num_threads=config.data.num_threads,
                              prefetch_buffer_size=config.data.prefetch)
  return iter(ds.to_iter_dataset(options))


def ensure_dataset(config) -> None:
  """Builds the synthetic dataset on first use (other datasets must exist), the fitted
  PCA codec of a ``latent.codec='pca'`` DiT, and the stored caption embeddings that
  ``text.encoder='precomputed'`` reads."""
  d = config.data
  try:
    builders.find_dataset(d.data_dir)
  except FileNotFoundError as e:
    if registry.latent_source(config) == "cache":
      raise FileNotFoundError(
          f"no latent cache in {d.data_dir}; encode one with `python -m tools.encode_latents "
          f"--vae_workdir={config.latent.vae_workdir} --data_dir=<pixel dataset> "
          f"--out={d.data_dir}`") from e
    if d.dataset != "synthetic_faces":
      raise
    spec = synthetic.spec_from_config(config)
    if jax.process_index() == 0:
      print(f"building the synthetic dataset in {d.data_dir} (first use)", flush=True)
      builders.SyntheticFaces(data_dir=d.data_dir, spec=spec).prepare()
    jax.experimental.multihost_utils.sync_global_devices("dataset built")
  if registry.latent_codec(config) == "pca":  # the linear codec is fitted with the data
    from video_dit import pca_codec  # pylint: disable=g-import-not-at-top
    pca_codec.ensure(config, lambda split, n: first_clips(config, split, n))
  if config.text.encoder == "precomputed":
    if (jax.process_index() == 0
        and not os.path.exists(text_store.store_path(d.data_dir, config.text.precomputed))):
      print(f"storing {config.text.precomputed} caption embeddings in {d.data_dir}", flush=True)
      text_store.build(d.data_dir, config.text.precomputed, config.text.max_len)
    jax.experimental.multihost_utils.sync_global_devices("text embeddings stored")


def first_clips(config, split: str, n: int) -> np.ndarray:
  """The first ``n`` centre clips (pixels) of a split."""
  pixels = config.copy_and_resolve_references()
  with pixels.unlocked():
    if "latent" in pixels:
      pixels.latent.source = "pixels"
    pixels.data.batch_size = max(1, min(64, n))
  out, count = [], 0
  for b in make_iterator(pixels, split, train=False):
    out.append(np.asarray(b["video"]))
    count += len(out[-1])
    if count >= n:
      break
  if not out:
    raise ValueError(f"the {split} split of {config.data.data_dir} has no clips (a PCA "
                     "codec fits on train clips and measures its PSNR on test clips)")
  return np.concatenate(out)[:n]
