"""Forgetting a person: every record, caption, codec and probe derived from them goes,
atomically, with an audit entry; the checkpoints trained on them are listed."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from video_dit.data import builders, forget

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _records(data_dir):
  builder = tfds.builder_from_directory(builders.find_dataset(data_dir))
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    out[split] = [(source[i]["key"].decode(), source[i]["identity"].decode(),
                   source[i]["caption"].decode()) for i in range(len(source))]
  return out


@pytest.fixture
def copy(tiny_run, tmp_path):
  """A writable copy of the shared tiny run's data (with a caption store, a codec and a
  probe beside it) and of its workdir."""
  shutil.copytree(tiny_run / "data", tmp_path / "data")
  shutil.copytree(tiny_run / "run", tmp_path / "run")
  data = str(tmp_path / "data")
  records = _records(data)
  captions = sorted({c for rows in records.values() for _, _, c in rows})
  n = len(captions)
  np.savez(os.path.join(builders.find_dataset(data), "text_minilm.npz"),
           captions=np.asarray(captions, dtype=str), tokens=np.zeros((n, 4, 8), np.float16),
           mask=np.ones((n, 4), bool), pooled=np.arange(n, dtype=np.float32)[:, None])
  for sub, name in (("codecs", "pca.npz"), ("probes", "identity.npz")):
    os.makedirs(os.path.join(data, sub))
    with open(os.path.join(data, sub, name), "wb") as f:
      f.write(b"fitted on the old records")
  return tmp_path, records


def test_forget_removes_the_person_everywhere_and_lists_checkpoints(copy):
  tmp, before = copy
  data, run = str(tmp / "data"), str(tmp / "run")
  person = before["train"][0][1]
  digest = forget.content_digest(builders.find_dataset(data))

  dry = forget.forget(data, person, dry_run=True, workdirs=[run])
  assert dry["datasets"][0]["records_removed"]["train"] >= 1
  assert dry["checkpoints_trained_on_identity"] == {run: [2]}
  assert forget.content_digest(builders.find_dataset(data)) == digest  # nothing changed
  assert not os.path.exists(os.path.join(data, forget.AUDIT_LOG))

  entry = forget.forget(data, person, workdirs=[run])
  after = _records(data)
  for split, rows in before.items():
    assert after[split] == [r for r in rows if r[1] != person]  # the rest, in order
  item = entry["datasets"][0]
  assert item["digest_before"] == digest
  assert item["digest_after"] == forget.content_digest(builders.find_dataset(data))
  assert entry["checkpoints_trained_on_identity"] == {run: [2]}
  # Captions only the person had are gone from the store; the others keep their rows.
  remaining = sorted({c for rows in after.values() for _, _, c in rows})
  with np.load(os.path.join(builders.find_dataset(data), "text_minilm.npz")) as f:
    assert list(f["captions"]) == remaining
    old = sorted({c for rows in before.values() for _, _, c in rows})
    np.testing.assert_array_equal(f["pooled"][:, 0], [old.index(c) for c in remaining])
  assert sorted(entry["derived_files_removed"]) == ["codecs/pca.npz", "probes/identity.npz"]
  assert not os.listdir(os.path.join(data, "codecs"))
  assert [p for p in os.listdir(data) if p.startswith(".forget")] == []
  with open(os.path.join(data, forget.AUDIT_LOG)) as f:
    logged = [json.loads(line) for line in f]
  assert logged == [json.loads(json.dumps(entry))]

  # Again: nothing left to remove, but the audit log still ties the run to the person.
  again = forget.forget(data, person, workdirs=[run])
  assert again["datasets"] == [] and again["checkpoints_trained_on_identity"] == {run: [2]}
  assert forget.forget(data, "nobody", workdirs=[run])["checkpoints_trained_on_identity"] == {
      run: []}


def test_an_interrupted_swap_is_finished_by_the_next_call(copy):
  tmp, before = copy
  data = str(tmp / "data")
  old = builders.find_dataset(data)
  new = os.path.join(data, ".forget_staging", "x", "version")
  shutil.copytree(old, new)
  with open(os.path.join(new, "marker"), "w") as f:
    f.write("new")
  # The crash came after the old copy was moved aside, before the new one moved in.
  trash = os.path.join(data, ".forget_staging", "old")
  os.rename(old, trash)
  with open(os.path.join(data, ".forget_journal.json"), "w") as f:
    json.dump(dict(old=old, new=new, trash=trash), f)
  forget.finish_interrupted(data)
  assert os.path.exists(os.path.join(old, "marker"))
  assert not os.path.exists(os.path.join(data, ".forget_journal.json"))
  assert not os.path.exists(os.path.join(data, ".forget_staging"))
  assert _records(data) == before


def test_forget_command_and_its_bad_inputs(copy):
  tmp, before = copy
  person = before["train"][0][1]
  cmd = [sys.executable, "-m", "tools.forget_identity", f"--identity={person}",
         f"--data_dir={tmp / 'data'}", "--dry_run"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout)["datasets"][0]["records_removed"]["train"] >= 1
  out = subprocess.run(cmd[:4] + [f"--data_dir={tmp / 'missing'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and "is not a folder" in out.stderr
  assert "Traceback" not in out.stderr
