import json
import os
import subprocess
import sys

import numpy as np
import pytest

from video_dit import video_io
from video_dit.data import builders, folder, synthetic

SPEC = synthetic.SyntheticSpec(num_identities=5, clips_per_identity=2, frames=8, height=32,
                               width=32, face_size=32, seed=1)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("synthetic"))
  report = builders.SyntheticFaces(data_dir=data_dir, spec=SPEC).prepare()
  assert report["built"] == {"train": 8, "test": 2} and not report["skipped"]
  return data_dir


def test_synthetic_round_trip(synthetic_dir):
  for split in ("train", "test"):
    source = builders.data_source(synthetic_dir, split)
    assert len(source) == len(SPEC.identity_ids(split)) * SPEC.clips_per_identity
    for record in source:
      key = record["key"].decode()
      identity, clip = int(key[2:8]), int(key[-4:])
      want = synthetic.make_example(SPEC, identity, clip)
      np.testing.assert_array_equal(video_io.decode_frames(record["frames"]), want["video"])
      np.testing.assert_array_equal(video_io.decode_image(record["face"]), want["face"])
      assert record["caption"].decode() == want["caption"]
      assert (record["identity_index"], record["action"]) == (identity, want["action"])
      assert identity in SPEC.identity_ids(split)


def test_find_dataset_errors_and_ignores_incomplete_builds(tmp_path, synthetic_dir):
  with pytest.raises(FileNotFoundError, match="no prepared dataset under .*make_dataset"):
    builders.find_dataset(str(tmp_path))
  # A build killed half-way (TFDS's incomplete.* folder) is never picked up.
  partial = tmp_path / "synthetic_faces" / "cfg" / "incomplete.ABC_1.0.0"
  partial.mkdir(parents=True)
  (partial / "dataset_info.json").write_text("{}")
  with pytest.raises(FileNotFoundError):
    builders.find_dataset(str(tmp_path))
  assert builders.find_dataset(synthetic_dir).endswith("1.0.0")
  with pytest.raises(ValueError, match="split 'validation' is not in"):
    builders.data_source(synthetic_dir, "validation")


def test_killed_build_leaves_nothing_readable(tmp_path):
  class Crashing(builders.SyntheticFaces):
    def _generate_examples(self, split):
      for i, ex in enumerate(super()._generate_examples(split)):
        if i == 3:
          raise KeyboardInterrupt("killed")
        yield ex

  with pytest.raises(KeyboardInterrupt):
    Crashing(data_dir=str(tmp_path), spec=SPEC).prepare()
  with pytest.raises(FileNotFoundError):
    builders.find_dataset(str(tmp_path))
  builders.SyntheticFaces(data_dir=str(tmp_path), spec=SPEC).prepare()  # a rebuild works
  assert len(builders.data_source(str(tmp_path), "train")) == 8


def _write_folder(root):
  """A dataset folder with good clips and one record for every bad-input case."""
  rng = np.random.default_rng(0)
  os.makedirs(root / "clips")
  os.makedirs(root / "faces")
  attrs = synthetic.identity_attributes(0, 0)
  clip = synthetic.render_frames(attrs, synthetic.action_poses(0, 12),
                                 synthetic._background(rng, 48, 64))  # pylint: disable=protected-access
  video_io.write_video(str(root / "clips/good.mp4"), clip, fps=8)
  video_io.write_video(str(root / "clips/short.mp4"), clip[:4], fps=8)
  video_io.write_video(str(root / "clips/flat.mp4"), np.full((12, 48, 64, 3), 128, np.uint8), 8)
  (root / "clips/corrupt.mp4").write_bytes(b"not a video at all" * 10)
  face = synthetic.render_reference(attrs, 40, rng)
  with open(root / "faces/p1.png", "wb") as f:
    f.write(video_io.encode_frames(face[None])[0])
  ok = dict(caption="a person nods", identity="p1", consent=True, face="faces/p1.png")
  lines = [
      json.dumps(dict(ok, video="clips/good.mp4")),                          # 1 built
      json.dumps(dict(ok, video="clips/good.mp4", start=0.25, end=1.5)),     # 2 built
      json.dumps(dict(ok, video="clips/corrupt.mp4")),                       # 3 corrupt
      json.dumps(dict(ok, video="clips/short.mp4")),                         # 4 too short
      json.dumps(dict(ok, video="clips/missing.mp4")),                       # 5 unreadable
      json.dumps(dict(ok, video="clips/good.mp4", start=0.5, face="faces/nope.png")),  # 6
      json.dumps({k: v for k, v in dict(ok, video="clips/flat.mp4").items() if k != "face"}),
      json.dumps(dict(ok, video="clips/good.mp4", start=0.75, caption="  ")),  # 8 empty
      json.dumps(dict(ok, video="../outside.mp4")),                          # 9 escapes
      json.dumps(dict(ok, video="clips/good.mp4", start=1.0, identity="p2",
                      consent=False)),                                       # 10 consent
      json.dumps(dict(ok, video="clips/good.mp4")),                          # 11 duplicate
      "{not json",                                                           # 12
  ]
  (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
  return [None, None, "unreadable or corrupt video", "fewer than the 8 asked",
          "unreadable or corrupt video", "face image faces/nope.png is missing",
          "no face found", "empty caption", "escapes the dataset root", "refused consent",
          "duplicate record", "not valid JSON"]


def test_folder_builds_good_records_and_reports_every_bad_one(tmp_path):
  expected = _write_folder(tmp_path / "clips_root")
  builder = folder.VideoFolder(
      data_dir=str(tmp_path / "data"), manifest=str(tmp_path / "clips_root/manifest.jsonl"),
      options=folder.FolderOptions(min_frames=8, face_size=32, test_fraction=0.0))
  report = builder.prepare()
  assert report["built"] == {"train": 2}
  reasons = {int(s["record"].split()[1]): s["reason"] for s in report["skipped"]}
  assert sorted(reasons) == [n for n, e in enumerate(expected, 1) if e]
  for n, want in enumerate(expected, 1):
    if want:
      assert want in reasons[n], (n, reasons[n])
  source = builders.data_source(str(tmp_path / "data"), "train")
  lengths = sorted(len(r["frames"]) for r in source)
  assert lengths == [10, 12]  # the whole clip, and 0.25 s .. 1.5 s at 8 fps
  record = source[0]
  assert video_io.decode_image(record["face"]).shape == (32, 32, 3)
  assert record["caption"] == b"a person nods" and record["identity"] == b"p1"
  # The skipped records are stored with the dataset too.
  assert len(builder.info.metadata["report"]["skipped"]) == 10


def test_identity_split_is_disjoint_and_stable():
  ids = [f"person{i}" for i in range(500)]
  test = {i for i in ids if folder.identity_split(i, 0.2) == "test"}
  assert 60 < len(test) < 140
  assert test == {i for i in ids if folder.identity_split(i, 0.2) == "test"}


def _run_make_dataset(*args):
  return subprocess.run([sys.executable, "-m", "tools.make_dataset", *args],
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def test_make_dataset_cli(tmp_path):
  out = _run_make_dataset("synthetic", f"--data_dir={tmp_path}/syn", "--num_identities=3",
                          "--clips_per_identity=1", "--frames=8", "--resolution=32")
  assert out.returncode == 0, out.stderr
  assert "built: 3 records (test 1, train 2)" in out.stdout and "skipped: 0" in out.stdout
  (tmp_path / "m.jsonl").write_text('{"video": "x.mp4", "caption": "", "identity": "a"}\n')
  out = _run_make_dataset("folder", f"--data_dir={tmp_path}/f", f"--manifest={tmp_path}/m.jsonl")
  assert out.returncode == 1
  assert "line 1: empty caption" in out.stdout and "nothing could be built" in out.stderr


def test_an_edited_manifest_builds_a_new_dataset(tmp_path):
  _write_folder(tmp_path / "root")
  manifest = tmp_path / "root/manifest.jsonl"
  make = lambda: folder.VideoFolder(data_dir=str(tmp_path / "data"), manifest=str(manifest),
                                      options=folder.FolderOptions(test_fraction=0.0))
  first = make()
  manifest.write_text(manifest.read_text().splitlines()[0] + "\n")
  assert make().data_path != first.data_path


def test_an_empty_split_is_reported_not_fatal(tmp_path):
  # The only test-split record (identity p0) is bad; the train split (p1) is good. Splits
  # are built in order test, train: the empty test split must not stop the train split.
  _write_folder(tmp_path / "root")
  assert folder.identity_split("p0", 0.2) == "test"
  assert folder.identity_split("p1", 0.2) == "train"
  ok = dict(caption="a person nods", consent=True, face="faces/p1.png")
  (tmp_path / "root/manifest.jsonl").write_text(
      json.dumps(dict(ok, video="clips/corrupt.mp4", identity="p0")) + "\n"
      + json.dumps(dict(ok, video="clips/good.mp4", identity="p1")) + "\n")
  out = _run_make_dataset("folder", f"--data_dir={tmp_path}/data",
                          f"--manifest={tmp_path}/root/manifest.jsonl", "--face_size=32")
  assert out.returncode == 0, out.stdout + out.stderr
  assert "built: 1 records (train 1)" in out.stdout
  assert "empty splits: test" in out.stdout and "line 1: unreadable or corrupt" in out.stdout
  assert len(builders.data_source(f"{tmp_path}/data", "train")) == 1


def test_consent_is_per_person_and_stored_with_each_record(tmp_path):
  _write_folder(tmp_path / "root")
  ok = dict(caption="a person nods", face="faces/p1.png", video="clips/good.mp4")
  lines = [dict(ok, identity="yes", consent=True, end=1.5),
           dict(ok, identity="yes", end=1.45),                   # inherits the person's yes
           dict(ok, identity="refuses", consent=True, end=1.4),
           dict(ok, identity="refuses", consent=False, end=1.35),  # one no stops them all
           dict(ok, identity="unsaid", end=1.3)]                 # no statement at all
  (tmp_path / "root/manifest.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))

  def build(name, **options):
    b = folder.VideoFolder(data_dir=str(tmp_path / name),
                             manifest=str(tmp_path / "root/manifest.jsonl"),
                             options=folder.FolderOptions(test_fraction=0.0, **options))
    return b.prepare(), lambda: builders.data_source(str(tmp_path / name), "train")

  report, source = build("strict")
  reasons = {s["record"]: s["reason"] for s in report["skipped"]}
  assert report["built"] == {"train": 2}
  assert set(reasons) == {"line 3", "line 4", "line 5"}
  assert "'refuses' refused consent (line 4)" in reasons["line 3"]
  assert "'unsaid' has no consent" in reasons["line 5"]
  records = source()
  assert {(r["identity"], r["consent"]) for r in records} == {(b"yes", b"given")}
  # --allow_missing_consent admits a person who said nothing, never one who said no.
  report, source = build("lenient", allow_missing_consent=True)
  assert report["built"] == {"train": 3}
  stored = {r["identity"]: r["consent"] for r in source()}
  assert stored == {b"yes": b"given", b"unsaid": b"missing (admitted by --allow_missing_consent)"}


def test_malformed_manifest_lines_and_odd_files_are_skipped_with_reasons(tmp_path):
  _write_folder(tmp_path / "root")
  root = tmp_path / "root"
  os.mkfifo(root / "clips/pipe.mp4")  # would hang a reader
  ok = dict(caption="a person nods", identity="p1", consent=True, face="faces/p1.png")
  lines = [json.dumps(dict(ok, video="clips/good.mp4")).encode(),            # 1 built
           b'{"video": "clips/good.mp4", "caption": "caf\xe9", "identity": "p1"}',  # 2
           json.dumps(dict(ok, video=7)).encode(),                           # 3
           json.dumps(dict(ok, video="clips/good.mp4", start="soon")).encode(),  # 4
           json.dumps(dict(ok, video="clips/good.mp4", end=None)).encode(),  # 5
           json.dumps(dict(ok, video="clips/good.mp4", start=1.0, end=0.5)).encode(),  # 6
           json.dumps(dict(ok, video="clips/pipe.mp4")).encode(),            # 7
           json.dumps(dict(ok, video="./clips/good.mp4")).encode(),          # 8 same file
           json.dumps(dict(ok, video="clips/good.mp4", start=0.25)).encode()]  # 9 built
  (root / "manifest.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  report = folder.VideoFolder(
      data_dir=str(tmp_path / "data"), manifest=str(root / "manifest.jsonl"),
      options=folder.FolderOptions(min_frames=8, face_size=32, test_fraction=0.0)).prepare()
  reasons = {s["record"]: s["reason"] for s in report["skipped"]}
  assert report["built"] == {"train": 2}, reasons
  assert "not UTF-8" in reasons["line 2"]
  assert "'video' must be a string" in reasons["line 3"]
  assert "'start' must be a number" in reasons["line 4"]
  assert "'end' must be a number" in reasons["line 5"]
  assert "start=1.0 is not before end=0.5" in reasons["line 6"]
  assert "not a regular file" in reasons["line 7"]
  assert "duplicate record" in reasons["line 8"]


def test_a_clip_replaced_in_place_rebuilds_and_leaves_one_dataset(tmp_path):
  _write_folder(tmp_path / "root")
  root = tmp_path / "root"
  ok = dict(caption="a person nods", identity="p1", consent=True, face="faces/p1.png")
  (root / "manifest.jsonl").write_text(json.dumps(dict(ok, video="clips/good.mp4")) + "\n")
  make = lambda: folder.VideoFolder(data_dir=str(tmp_path / "data"),
                                      manifest=str(root / "manifest.jsonl"),
                                      options=folder.FolderOptions(test_fraction=0.0))
  first = make()
  first.prepare()
  frames = len(builders.data_source(str(tmp_path / "data"), "train")[0]["frames"])
  # The same name, other content (the manifest is unchanged): a new build, not the old one.
  clip, _ = video_io.read_video(str(root / "clips/good.mp4"))
  video_io.write_video(str(root / "clips/good.mp4"), clip[:9], fps=8)
  second = make()
  assert second.data_path != first.data_path
  second.prepare()
  assert builders.find_dataset(str(tmp_path / "data")) == str(second.data_path)  # only one
  assert len(builders.data_source(str(tmp_path / "data"), "train")[0]["frames"]) == 9 != frames
