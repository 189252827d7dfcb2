"""Forget a person: remove an identity from everything under a data folder, and find
the checkpoints that were trained on them.

``forget(root, identity)`` visits every prepared dataset under ``root`` (pixel
datasets, latent caches) and, where the identity has records, rebuilds that dataset
without them, with its stored caption embeddings kept only for captions that remain.
Derived files fitted on the old records go too: the PCA codecs and identity/action
probes of that dataset's folder (both are refitted on next use). Each dataset is
replaced atomically: the new copy is built beside it, then swapped in by renames
recorded in a journal, so a crash at any point leaves the old or the new dataset (a
re-run finishes an interrupted swap). Every call appends to ``root/forget_audit.jsonl``:
when, which identity, what was removed, and the content digests (SHA-256 of the
record shards) of each dataset before and after.

Training appends the content digests of the datasets it reads to ``W/datasets.jsonl``
(``record_datasets``), so ``trained_on`` lists the checkpoints of a workdir that saw a
dataset version the person was removed from.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
import types
import uuid

import numpy as np
import tensorflow_datasets as tfds

from video_dit.data import builders

AUDIT_LOG = "forget_audit.jsonl"
DATASETS_FILE = "datasets.jsonl"
_JOURNAL = ".forget_journal.json"
_STAGING = ".forget_staging"


def dataset_dirs(root: str) -> list[str]:
  """Every complete dataset version folder under ``root`` (any depth), sorted."""
  found = glob.glob(os.path.join(root, "**", "dataset_info.json"), recursive=True)
  return sorted(os.path.dirname(p) for p in found if not any(
      part.startswith(("incomplete", ".")) for part in os.path.relpath(p, root).split(os.sep)))


def content_digest(dataset_dir: str) -> str:
  """SHA-256 over the dataset's record shards (names and bytes), in name order."""
  h = hashlib.sha256()
  for path in sorted(glob.glob(os.path.join(dataset_dir, "*.array_record-*"))):
    h.update(os.path.basename(path).encode() + b"\0")
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
  return h.hexdigest()


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def identity_counts(dataset_dir: str, identity: str) -> dict[str, int]:
  """Records of ``identity`` per split."""
  builder = tfds.builder_from_directory(dataset_dir)
  counts = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    counts[split] = sum(_text(source[i]["identity"]) == identity for i in range(len(source)))
  return counts


def _rewrite_builder(source_dir: str, identity: str, staging: str):
  """A builder writing ``source_dir``'s records except ``identity``'s, same name,
  config and version, under ``staging``."""
  info = tfds.builder_from_directory(source_dir).info
  feats = info.features

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=feats,
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in info.splits
            if s not in self.excluded_splits}

  def _generate_examples(self, split):
    self.attempted_splits.add(split)
    source = builders.data_source(source_dir, split)
    for i in range(len(source)):
      rec = source[i]
      if _text(rec["identity"]) == identity:
        continue
      self.report["built"][split] += 1
      yield _text(rec["key"]), rec

  cls = types.new_class("Rewrite", (builders.Builder,), {"skip_registration": True},
                        lambda ns: ns.update(
                            name=info.name, VERSION=tfds.core.Version(str(info.version)),
                            _info=_info, _split_generators=_split_generators,
                            _generate_examples=_generate_examples,
                            candidate_splits=property(lambda self: set(info.splits))))
  config = tfds.core.BuilderConfig(name=info.config_name) if info.config_name else None
  return cls(data_dir=staging, **({"config": config} if config else {}))


def _keep_captions(old_dir: str, new_dir: str) -> list[str]:
  """Copies the stored caption embeddings of the captions ``new_dir`` still has;
  returns the captions dropped."""
  dropped = []
  for store in glob.glob(os.path.join(old_dir, "text_*.npz")):
    remaining = set()
    builder = tfds.builder_from_directory(new_dir)
    for split in builder.info.splits:
      source = builder.as_data_source(split)
      remaining |= {_text(source[i]["caption"]) for i in range(len(source))}
    with np.load(store, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    keep = np.asarray([str(c) in remaining for c in arrays["captions"]], bool)
    dropped += [str(c) for c in arrays["captions"][~keep]]
    np.savez(os.path.join(new_dir, os.path.basename(store)),
             **{k: v[keep] for k, v in arrays.items()})
  return sorted(set(dropped))


def _swap(root: str, old: str, new: str) -> None:
  """Replaces folder ``old`` by ``new`` through renames recorded in a journal."""
  trash = os.path.join(root, _STAGING, f"old_{uuid.uuid4().hex}")
  journal = os.path.join(root, _JOURNAL)
  with open(journal + ".tmp", "w", encoding="utf-8") as f:
    json.dump(dict(old=old, new=new, trash=trash), f)
  os.replace(journal + ".tmp", journal)
  finish_interrupted(root)


def finish_interrupted(root: str) -> None:
  """Completes a swap a crash interrupted (no-op without a journal)."""
  journal = os.path.join(root, _JOURNAL)
  if not os.path.exists(journal):
    return
  with open(journal, encoding="utf-8") as f:
    j = json.load(f)
  if os.path.exists(j["new"]):
    if os.path.exists(j["old"]):
      os.rename(j["old"], j["trash"])
    os.rename(j["new"], j["old"])
  os.remove(journal)
  shutil.rmtree(os.path.join(root, _STAGING), ignore_errors=True)


def _data_folder(dataset_dir: str, root: str) -> str:
  """The ``data.data_dir`` a dataset version folder belongs to (where its codecs/ and
  probes/ live): the nearest ancestor holding them, else the dataset's top folder."""
  d = dataset_dir
  while os.path.abspath(d) != os.path.abspath(root):
    d = os.path.dirname(d)
    if os.path.isdir(os.path.join(d, "codecs")) or os.path.isdir(os.path.join(d, "probes")):
      return d
  return root


def forget(root: str, identity: str, dry_run: bool = False, workdirs=()) -> dict:
  """Removes ``identity`` everywhere under ``root``; returns (and logs) the audit entry."""
  if not identity or not identity.strip():
    raise ValueError("--identity is empty: give the identity name of the person's records")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--data_dir={root} is not a folder")
  for w in workdirs:
    if not os.path.isdir(os.path.join(w, "checkpoints")):
      raise FileNotFoundError(f"--workdirs: {w} is not a training workdir (no checkpoints/ "
                              "folder); fix the path or leave it out")
  finish_interrupted(root)
  shutil.rmtree(os.path.join(root, _STAGING), ignore_errors=True)  # a build a crash cut short
  entry = dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), identity=identity,
               dry_run=dry_run, datasets=[], derived_files_removed=[])
  for dataset_dir in dataset_dirs(root):
    counts = identity_counts(dataset_dir, identity)
    if not sum(counts.values()):
      continue
    item = dict(dataset=os.path.relpath(dataset_dir, root), records_removed=counts,
                digest_before=content_digest(dataset_dir))
    entry["datasets"].append(item)
    if dry_run:
      continue
    staging = os.path.join(root, _STAGING, uuid.uuid4().hex)
    builder = _rewrite_builder(dataset_dir, identity, staging)
    builder.prepare()
    new_dir = builder.data_dir
    item["empty_splits"] = builder.report.get("empty_splits", [])
    if not os.path.exists(os.path.join(new_dir, "dataset_info.json")):  # nothing remained
      new_dir = None
    else:
      item["captions_removed"] = _keep_captions(dataset_dir, new_dir)
      item["digest_after"] = content_digest(new_dir)
    folder = _data_folder(dataset_dir, root)
    for derived in sorted(glob.glob(os.path.join(folder, "codecs", "*")) +
                          glob.glob(os.path.join(folder, "probes", "*"))):
      entry["derived_files_removed"].append(os.path.relpath(derived, root))
      os.remove(derived)
    if new_dir is None:
      shutil.rmtree(dataset_dir)
      item["dataset_removed"] = True
    else:
      _swap(root, dataset_dir, new_dir)
  removed = {d["digest_before"] for d in entry["datasets"]}
  entry["checkpoints_trained_on_identity"] = {
      w: trained_on(w, removed | _earlier_digests(root, identity)) for w in workdirs}
  if not dry_run:
    with open(os.path.join(root, AUDIT_LOG), "a", encoding="utf-8") as f:
      f.write(json.dumps(entry) + "\n")
  return entry


def _earlier_digests(root: str, identity: str) -> set[str]:
  path = os.path.join(root, AUDIT_LOG)
  if not os.path.exists(path):
    return set()
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {d["digest_before"] for r in rows if r["identity"] == identity for d in r["datasets"]}


def record_datasets(workdir: str, data_dir: str, start_step: int) -> None:
  """Appends the content digest of the dataset a run reads from ``start_step`` on."""
  dataset_dir = builders.find_dataset(data_dir)
  row = dict(time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), first_step=start_step,
             dataset=os.path.abspath(dataset_dir), digest=content_digest(dataset_dir))
  with open(os.path.join(workdir, DATASETS_FILE), "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")


def trained_on(workdir: str, digests: set[str]) -> list[int]:
  """The checkpoint steps of ``workdir`` trained on any dataset version in ``digests``
  (every checkpoint after the first step that read one)."""
  from video_dit import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, DATASETS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  first = [r["first_step"] for r in rows if r["digest"] in digests]
  if not first:
    return []
  return [s for s in workdir_lib.steps(workdir) if s > min(first)]
