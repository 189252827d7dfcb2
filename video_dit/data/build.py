"""Building a dataset from the command line's options, and its closing summary
(``python -m tools.make_dataset``)."""

from __future__ import annotations

import collections

from video_dit.data import builders, folder, synthetic


def build(builder) -> dict:
  """Prepares ``builder`` (a no-op when it is built); returns its report with the
  dataset's ``path``, whether it ``existed`` and the records ``built`` per split."""
  existed = builder.is_prepared()
  report = builder.prepare()
  report["path"] = builder.data_path
  report["existed"] = existed
  if existed:  # nothing was rebuilt: count what is there
    report["built"] = collections.Counter(
        {split: info.num_examples for split, info in builder.info.splits.items()})
  return report


def synthetic_faces(data_dir: str, *, num_identities: int, clips_per_identity: int,
                    frames: int, resolution: int, face_size: int = 0,
                    test_fraction: float = 0.2, seed: int = 0) -> dict:
  spec = synthetic.SyntheticSpec(
      num_identities=num_identities, clips_per_identity=clips_per_identity, frames=frames,
      height=resolution, width=resolution, face_size=face_size or resolution,
      test_fraction=test_fraction, seed=seed)
  return build(builders.SyntheticFaces(data_dir=data_dir, spec=spec))


def video_folder(data_dir: str, manifest: str, *, min_frames: int = 8, max_side: int = 256,
                 face_size: int = 0, test_fraction: float = 0.2,
                 allow_missing_consent: bool = False) -> dict:
  options = folder.FolderOptions(
      min_frames=min_frames, max_side=max_side, face_size=face_size or 128,
      test_fraction=test_fraction, allow_missing_consent=allow_missing_consent)
  return build(folder.VideoFolder(data_dir=data_dir, manifest=manifest, options=options))


def summarize(report: dict) -> str:
  lines = [f"dataset: {report['path']}" + ("  (already built; reused)" if report["existed"]
                                           else "")]
  built = report["built"]
  lines.append(f"built: {sum(built.values())} records ("
               + ", ".join(f"{k} {v}" for k, v in sorted(built.items())) + ")")
  if report.get("empty_splits"):
    lines.append("empty splits: " + ", ".join(report["empty_splits"])
                 + " (every record skipped; the other splits were built)")
  skipped = report["skipped"]
  lines.append(f"skipped: {len(skipped)} records")
  reasons = collections.Counter(s["reason"].split(" (")[0] for s in skipped)
  for s in skipped:
    lines.append(f"  {s['record']}: {s['reason']}")
  if len(reasons) > 1:
    lines.append("by reason: " + "; ".join(f"{n} x {r}" for r, n in reasons.most_common()))
  return "\n".join(lines)
