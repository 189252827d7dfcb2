"""Folders of real clips: ``manifest.jsonl`` -> a ``video_folder`` dataset.

One JSON object per clip, paths relative to the manifest; every bad record is skipped
with its line number and the reason, and the build goes on (``VideoFolder``). Consent
is per person (``_consent_by_identity``).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shutil
import stat
import zlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from video_dit import video_io
from video_dit.data import builders, faces

CONSENT_GIVEN = "given"
# Seconds decoded before and after a record's [start, end]: where a reference face is
# looked for when the record names none (the rest of a long file is never decoded).
REFERENCE_MARGIN_S = 2.0
CONSENT_ADMITTED = "missing (admitted by --allow_missing_consent)"


@dataclasses.dataclass(frozen=True)
class FolderOptions:
  min_frames: int = 8               # records with fewer frames are skipped
  max_side: int = 256               # stored frames are at most this large
  face_size: int = 128              # stored reference crop side
  test_fraction: float = 0.1        # identities hashed into the test split
  allow_missing_consent: bool = False
  jpeg_quality: int = 90


def identity_split(identity: str, test_fraction: float) -> str:
  """A stable, disjoint split of identities by hash."""
  return "test" if zlib.crc32(identity.encode()) % 10_000 < test_fraction * 10_000 else "train"


class VideoFolder(builders.Builder):
  """Clips listed in ``manifest.jsonl``: one JSON object per clip, paths relative to it:

    {"video": "clips/a.mp4", "caption": "a man nods", "face": "faces/a.png",
     "identity": "p017", "consent": true, "start": 1.0, "end": 3.5}

  ``face`` is optional: a face is then detected in a frame outside the clip and
  cropped. ``start``/``end`` (seconds) cut a clip out of a longer video.
  """
  name = "video_folder"

  def __init__(self, *, data_dir: str, manifest: str, options: FolderOptions = FolderOptions()):
    self.manifest = os.path.abspath(manifest)
    if not os.path.isfile(self.manifest):  # before TFDS creates any folder
      raise FileNotFoundError(f"manifest {self.manifest} does not exist; pass "
                              "--manifest=path/to/manifest.jsonl")
    self.root = os.path.dirname(self.manifest)
    self.options = options
    # The manifest's contents and the options name the config: an edited manifest
    # builds a new dataset instead of reusing a stale one.
    content = b""
    if os.path.isfile(self.manifest):
      with open(self.manifest, "rb") as f:
        content = f.read()
    digest = zlib.crc32(json.dumps([self.manifest, dataclasses.asdict(options),
                                    self._file_stamps(content)]).encode() + content)
    config = tfds.core.BuilderConfig(name=f"{os.path.basename(self.root) or 'root'}_{digest:08x}")
    super().__init__(data_dir=data_dir, config=config)

  def _split_generators(self, dl_manager):
    del dl_manager
    records = list(self._records())
    self._candidates = {identity_split(str(r["identity"]), self.options.test_fraction)
                        for _, r in records}
    splits = self._candidates - self.excluded_splits
    return {split: self._generate_examples(records, split) for split in sorted(splits)}

  @property
  def candidate_splits(self) -> set[str]:
    return getattr(self, "_candidates", {"train", "test"})

  def _file_stamps(self, content: bytes) -> list:
    """(path, size, mtime) of every file the manifest names: a clip replaced in place
    makes a new build, not a reuse of the stale one."""
    stamps = []
    for line in content.splitlines():
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      for field in ("video", "face"):
        path = rec.get(field) if isinstance(rec, dict) else None
        if isinstance(path, str):
          try:
            st = os.stat(os.path.join(self.root, path))
            stamps.append([path, st.st_size, st.st_mtime_ns])
          except OSError:
            stamps.append([path, None, None])
    return stamps

  def prepare(self) -> dict[str, Any]:
    """Builds (see ``builders.Builder.prepare``); a new build replaces this manifest's older
    builds in ``data_dir``, so the folder holds one dataset."""
    existed = self.is_prepared()
    report = super().prepare()
    if not existed and sum(report["built"].values()):
      current = os.path.realpath(str(self.data_path))
      for old in glob.glob(os.path.join(str(self.data_dir_root), self.name, "*", "*")):
        if os.path.realpath(old) != current and os.path.isfile(
            os.path.join(old, "dataset_info.json")):
          print(f"removing the older build {old} (its manifest or clips changed)", flush=True)
          shutil.rmtree(old)
          if not os.listdir(os.path.dirname(old)):
            os.rmdir(os.path.dirname(old))
    return report

  def _records(self) -> Iterator[tuple[str, dict]]:
    """Valid manifest entries; everything else is reported and skipped.

    Consent is per person: an identity's clips are built only if one of its records
    says ``"consent": true`` and none says false. ``--allow_missing_consent`` admits
    identities with no statement at all, never one that refused.
    """
    entries = []
    with open(self.manifest, "rb") as f:
      for n, raw in enumerate(f, 1):
        where = f"line {n}"
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          self._skip(where, f"not UTF-8 text ({e.reason} at byte {e.start}); save the "
                     "manifest as UTF-8")
          continue
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          self._skip(where, f"not valid JSON ({e.msg})")
          continue
        entries.append((where, rec))
    consent = _consent_by_identity(entries)
    seen = {}
    for where, rec in entries:
      problem = self._check(rec) or self._check_consent(rec, consent)
      if problem:
        self._skip(where, problem)
        continue
      ident = (os.path.realpath(os.path.join(self.root, rec["video"])), rec.get("start"),
               rec.get("end"))
      if ident in seen:
        self._skip(where, f"duplicate record (same video and times as {seen[ident]})")
        continue
      seen[ident] = where
      yield where, dict(rec, consent=(CONSENT_GIVEN if consent.get(str(rec["identity"])) is True
                                      else CONSENT_ADMITTED))

  def _check_consent(self, rec: dict, consent: dict) -> str | None:
    state = consent.get(str(rec["identity"]))
    if isinstance(state, str):  # refused: the line that says so
      return (f"identity '{rec['identity']}' refused consent ({state}); none of its clips "
              "is built")
    if state is None and not self.options.allow_missing_consent:
      return (f"identity '{rec['identity']}' has no consent (\"consent\": true on one of its "
              "records); fix the manifest or pass --allow_missing_consent")
    return None

  def _check(self, rec: Any) -> str | None:
    if not isinstance(rec, dict):
      return "not a JSON object"
    for field in ("video", "caption", "identity"):
      if field not in rec:
        return f"missing field '{field}'"
    for field in ("video", "caption", "face"):
      if field in rec and not isinstance(rec[field], str):
        return f"'{field}' must be a string, not {json.dumps(rec[field])}"
    if not isinstance(rec["identity"], (str, int)) or isinstance(rec["identity"], bool):
      return f"'identity' must be a string, not {json.dumps(rec['identity'])}"
    for field in ("start", "end"):
      if field in rec and (isinstance(rec[field], bool)
                           or not isinstance(rec[field], (int, float))
                           or not math.isfinite(rec[field]) or rec[field] < 0):
        return (f"'{field}' must be a number of seconds >= 0, not "
                f"{json.dumps(rec[field])}")
    if rec.get("start", 0) >= rec.get("end", math.inf):
      return f"start={rec.get('start', 0)} is not before end={rec['end']}"
    if not rec["caption"].strip():
      return "empty caption"
    for field in ("video", "face"):
      if field in rec and not self._inside_root(rec[field]):
        return f"{field} path '{rec[field]}' escapes the dataset root {self.root}"
    for field in ("video", "face"):
      path = os.path.join(self.root, rec[field]) if field in rec else None
      if path and os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        return f"{field} '{rec[field]}' is not a regular file (a pipe, device or folder)"
    return None

  def _inside_root(self, path: str) -> bool:
    full = os.path.realpath(os.path.join(self.root, path))
    return os.path.commonpath([full, os.path.realpath(self.root)]) == os.path.realpath(self.root)

  def _generate_examples(self, records, split):
    self.attempted_splits.add(split)
    opts = self.options
    for where, rec in records:
      if identity_split(str(rec["identity"]), opts.test_fraction) != split:
        continue
      try:
        example = self._example(rec)
      except _Skip as e:
        self._skip(where, str(e))
        continue
      self.report["built"][split] += 1
      yield f"{where}:{rec['video']}", example

  def _example(self, rec: dict) -> dict:
    opts = self.options
    path = os.path.join(self.root, rec["video"])
    start = float(rec.get("start", 0.0))
    end = float(rec["end"]) if "end" in rec else None
    try:  # the clip plus a margin each side (where a reference face may be found)
      frames, fps, t0 = video_io.read_video(
          path, max_side=opts.max_side, start=max(0.0, start - REFERENCE_MARGIN_S),
          end=None if end is None else end + REFERENCE_MARGIN_S, with_time=True)
    except Exception as e:  # pylint: disable=broad-except
      raise _Skip(f"unreadable or corrupt video {rec['video']}: {type(e).__name__}: {e}") from e
    first = max(0, int(round((start - t0) * fps)))
    last = int(round((end - t0) * fps)) if end is not None else len(frames)
    clip = frames[first:min(last, len(frames))]
    outside = np.concatenate([frames[:first], frames[last:]])
    if "face" not in rec and not len(outside):
      # Keep a tail of the video out of the clip so the reference is not a clip frame.
      reserve = max(1, len(frames) // 10)
      clip, outside = clip[:-reserve], clip[-reserve:]
    if len(clip) < opts.min_frames:
      raise _Skip(f"clip has {len(clip)} frames, fewer than the {opts.min_frames} asked "
                  "(--min_frames)")
    if "face" in rec:
      face_path = os.path.join(self.root, rec["face"])
      if not os.path.isfile(face_path):
        raise _Skip(f"face image {rec['face']} is missing")
      try:
        with open(face_path, "rb") as f:
          face = video_io.decode_image(f.read())
      except Exception as e:  # pylint: disable=broad-except
        raise _Skip(f"unreadable face image {rec['face']}: {e}") from e
      face = faces.square_resize(face, opts.face_size)
    else:
      face = faces.crop_face_from_frames(outside, opts.face_size)
      if face is None:
        raise _Skip("no face found in the frames outside the clip; add a \"face\" image")
    identity = str(rec["identity"])
    return dict(
        frames=np.asarray(video_io.encode_frames(clip, "jpeg", opts.jpeg_quality), dtype=object),
        face=video_io.encode_frames(face[None], "png")[0],
        caption=str(rec["caption"]).strip(), identity=identity,
        identity_index=-1, action=-1, fps=fps,
        key=f"{rec['video']}@{rec.get('start', 0)}", consent=rec["consent"])


def _consent_by_identity(entries) -> dict[str, Any]:
  """identity -> True (some record consents, none refuses), 'line N' (the first record
  that refuses), or absent (no record says)."""
  out: dict[str, Any] = {}
  for where, rec in entries:
    if not isinstance(rec, dict) or "identity" not in rec or "consent" not in rec:
      continue
    identity = str(rec["identity"])
    if rec["consent"] is not True:  # false, or anything that is not a plain yes
      out.setdefault(identity, where)
      if out[identity] is True:
        out[identity] = where
    else:
      out.setdefault(identity, True)
  return out


class _Skip(Exception):
  """A record that cannot be built, with the reason."""
