"""TFDS builders writing ArrayRecord shards, without TensorFlow.

Two datasets of face-video triads with the same features:

  frames     encoded frames (PNG for synthetic, JPEG for real video)
  face       PNG of the reference face crop
  caption    the action, in words
  identity   identity id (string); identity_index / action: ints (-1 = unknown)
  fps, key, consent

* ``synthetic_faces``: ``video_dit.data.synthetic`` rendered at build time.
* ``video_folder``: a ``manifest.jsonl`` of clips relative to its folder
  (``video_dit/data/folder.py``).
* ``latent_cache``: a dataset's records plus a VAE's latents of each clip.

TFDS writes into an ``incomplete.*`` folder and renames it when every split is
done, so a killed build leaves nothing that ``find_dataset`` would accept. Bad
folder records are skipped with a reason each (``builder.report``, also stored
in the dataset's metadata); the build goes on with the rest.
"""

from __future__ import annotations

import collections
import glob
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from video_dit import video_io
from video_dit.data import synthetic

VERSION = "1.0.0"


def features() -> tfds.features.FeaturesDict:
  obj = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.object_)
  return tfds.features.FeaturesDict({
      "frames": obj((None,)),
      "face": obj(()),
      "caption": tfds.features.Text(),
      "identity": tfds.features.Text(),
      "identity_index": tfds.features.Scalar(dtype=np.int64),
      "action": tfds.features.Scalar(dtype=np.int64),
      "fps": tfds.features.Scalar(dtype=np.float32),
      "key": tfds.features.Text(),
      "consent": tfds.features.Text(),  # the person's consent, as the build found it
  })


CONSENT_SYNTHETIC = "synthetic identity (no real person)"


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared: features, ArrayRecord, and a report of skipped records."""
  VERSION = tfds.core.Version(VERSION)
  url_infos = {}  # nothing is downloaded (and no checksums file is looked up)

  def __init__(self, *, data_dir: str, **kwargs):
    super().__init__(data_dir=data_dir, file_format="array_record", **kwargs)
    self.report: dict[str, Any] = {"built": collections.Counter(), "skipped": []}
    self.excluded_splits: set[str] = set()
    self.attempted_splits: set[str] = set()

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=features(),
                                 metadata=tfds.core.MetadataDict())

  def _skip(self, where: str, reason: str) -> None:
    self.report["skipped"].append({"record": where, "reason": reason})

  def prepare(self) -> dict[str, Any]:
    """Builds the dataset (no-op if it exists); returns the build report.

    Splits are independent: TFDS refuses a split without examples, so when every
    record of a split turns out bad, the build is redone without that split (reported
    under ``empty_splits``). When nothing at all could be built the report says so and
    no dataset is written.
    """
    self.excluded_splits = set()
    skipped_before: list[dict] = []  # the records of splits left out stay reported
    while True:
      self.report["built"].clear()
      self.report["skipped"].clear()
      self.report["empty_splits"] = sorted(self.excluded_splits)
      self.attempted_splits = set()
      self.info.metadata["report"] = self.report
      try:
        self.download_and_prepare()
        return self._merge_skipped(skipped_before)
      except AssertionError as e:
        if "No examples were yielded" not in str(e):
          raise
        empty = {s for s in self.attempted_splits if not self.report["built"][s]}
        if not empty:
          raise
        skipped_before += self.report["skipped"]
        self.excluded_splits |= empty
        if not self.candidate_splits - self.excluded_splits:  # nothing left to build
          self.report["empty_splits"] = sorted(self.excluded_splits)
          return self._merge_skipped(skipped_before)

  def _merge_skipped(self, earlier: list[dict]) -> dict[str, Any]:
    """The report with the skips of earlier attempts, each record once, in file order."""
    merged = {}
    for skip in earlier + self.report["skipped"]:
      merged.setdefault(skip["record"], skip)
    self.report["skipped"][:] = sorted(merged.values(), key=lambda s: record_order(s["record"]))
    return self.report

  @property
  def candidate_splits(self) -> set[str]:
    """The splits this builder would make before any is left out for being empty."""
    return {"train", "test"}


def record_order(record: str):
  parts = record.split()
  return (0, int(parts[1]), "") if len(parts) == 2 and parts[1].isdigit() else (1, 0, record)


# ----------------------------------------------------------------------------- synthetic


class SyntheticFaces(Builder):
  """Procedural identities doing captioned actions; train/test identities disjoint."""
  name = "synthetic_faces"

  def __init__(self, *, data_dir: str, spec: synthetic.SyntheticSpec):
    self.spec = spec
    # The spec names the config, so datasets of different specs live side by side.
    config = tfds.core.BuilderConfig(
        name=(f"{spec.frames}f_{spec.height}x{spec.width}_face{spec.face_size}_"
              f"{spec.num_identities}ids_{spec.clips_per_identity}clips_"
              f"test{spec.test_fraction:g}_seed{spec.seed}"))
    super().__init__(data_dir=data_dir, config=config)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split):
    for ex in synthetic.examples(self.spec, split):
      self.report["built"][split] += 1
      yield ex["key"], dict(
          frames=np.asarray(video_io.encode_frames(ex["video"], "png"), dtype=object),
          face=video_io.encode_frames(ex["face"][None], "png")[0],
          caption=ex["caption"], identity=f"id{ex['identity']:06d}",
          identity_index=ex["identity"], action=ex["action"], fps=8.0, key=ex["key"],
          consent=CONSENT_SYNTHETIC)


# ----------------------------------------------------------------------------- latents


def _latent_features() -> tfds.features.FeaturesDict:
  out = dict(features())
  out["latents"] = tfds.features.Tensor(shape=(), dtype=np.object_)  # float16 bytes
  out["latent_shape"] = tfds.features.Tensor(shape=(4,), dtype=np.int64)
  return tfds.features.FeaturesDict(out)


def decode_latents(record: dict) -> np.ndarray:
  """A cache record's (T, H, W, C) normalised latents as float32."""
  shape = tuple(int(x) for x in record["latent_shape"])
  return np.frombuffer(record["latents"], np.float16).reshape(shape).astype(np.float32)


class LatentCache(Builder):
  """A dataset's clips encoded once by a VAE (``tools.encode_latents``): every source
  feature carried along (frames too, for evaluation against real clips) plus the
  normalised latents of the clip the eval pipeline decodes (first frames, centre crop).

  ``encode(records) -> latents`` encodes a list of source records; the builder config
  name carries the VAE's step and parameter digest, so caches of different VAEs live
  side by side.
  """
  name = "latent_cache"

  def __init__(self, *, data_dir: str, source_dir: str, encode, tag: str, batch: int = 16):
    self.source_dir, self.encode, self.batch = source_dir, encode, batch
    super().__init__(data_dir=data_dir, config=tfds.core.BuilderConfig(name=tag))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=_latent_features(),
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = tfds.builder_from_directory(find_dataset(self.source_dir)).info.splits
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split):
    source = data_source(self.source_dir, split)
    for start in range(0, len(source), self.batch):
      records = [source[i] for i in range(start, min(start + self.batch, len(source)))]
      for rec, z in zip(records, self.encode(records)):
        z = np.asarray(z, np.float16)
        self.report["built"][split] += 1
        out = {k: rec[k] for k in features().keys() if k in rec}
        out.setdefault("consent", "unknown (source built before consent was stored)")
        out.update(latents=z.tobytes(), latent_shape=np.asarray(z.shape, np.int64))
        key = rec["key"].decode() if isinstance(rec["key"], bytes) else str(rec["key"])
        yield key, out


# ----------------------------------------------------------------------------- reading


def find_dataset(data_dir: str) -> str:
  """The one prepared dataset version folder under ``data_dir`` (or data_dir itself)."""
  if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
    return data_dir
  found = [os.path.dirname(p) for depth in ("*/*", "*/*/*")
           for p in glob.glob(os.path.join(data_dir, depth, "dataset_info.json"))]
  # TFDS builds into incomplete.* folders and renames them when done.
  found = sorted(p for p in found
                 if not any(part.startswith("incomplete") for part in p.split(os.sep)))
  if not found:
    raise FileNotFoundError(
        f"no prepared dataset under {data_dir}; build one with "
        f"`python -m tools.make_dataset synthetic --data_dir={data_dir}` (or `folder`)")
  if len(found) > 1:
    raise ValueError(f"{len(found)} datasets under {data_dir}: {found}; set data.data_dir "
                     "to one of them")
  return found[0]


def data_source(data_dir: str, split: str):
  """Random-access source of one split (``tfds`` ArrayRecord reader)."""
  builder = tfds.builder_from_directory(find_dataset(data_dir))
  if split not in builder.info.splits:
    raise ValueError(f"split '{split}' is not in {find_dataset(data_dir)}; "
                     f"it has {list(builder.info.splits)}")
  return builder.as_data_source(split)
