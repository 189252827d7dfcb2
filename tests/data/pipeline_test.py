import numpy as np
import pytest

from tests import helpers
from video_dit import sharding, video_io
from video_dit.data import builders, pipeline, synthetic

SPEC = synthetic.SyntheticSpec(num_identities=5, clips_per_identity=3, frames=8, height=32,
                               width=32, face_size=32, seed=2)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("data"))
  builders.SyntheticFaces(data_dir=data_dir, spec=SPEC).prepare()
  c = helpers.runlocal_config(**{"data.data_dir": data_dir, "data.batch_size": 4,
                                 "data.frames": 4, "data.stride": 2})
  return c


def _batches(config, n, **kw):
  it = pipeline.make_iterator(config, **kw)
  return [next(it) for _ in range(n)]


def test_batches_have_the_model_inputs(config):
  b = _batches(config, 1)[0]
  assert b["video"].shape == (4, 4, 32, 32, 3) and b["video"].dtype == np.float32
  assert b["face"].shape == (4, 32, 32, 3)
  assert b["text_ids"].shape == (4, config.text.max_len) and b["text_ids"].dtype == np.int32
  assert -1.0 <= b["video"].min() < -0.5 and 0.5 < b["video"].max() <= 1.0
  assert np.all((b["text_ids"] > 0).sum(1) >= 2)  # tokenised captions
  assert np.all(b["identity_index"] < 4)          # train identities only (ids 0..3 of 5)


def test_clip_sampling_takes_strided_frames_of_the_record(config):
  source = builders.data_source(config.data.data_dir, "train")
  ds = pipeline.make_dataset(config, train=False, source=source)
  b = ds[0]  # eval: first frames, centre crop, no shuffle
  frames = video_io.decode_frames(source[0]["frames"], [0, 2, 4, 6])
  np.testing.assert_allclose(b["video"][0], frames / 127.5 - 1, atol=1e-6)


def test_deterministic_by_seed(config):
  a, b = _batches(config, 3), _batches(config, 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  other = config.copy_and_resolve_references()
  other.seed = 1
  c = _batches(other, 3)
  assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c))


def test_resume_gives_the_same_next_batches(config):
  it = pipeline.make_iterator(config)
  for _ in range(5):  # past one epoch of 12 train clips / 4
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = pipeline.make_iterator(config)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_epochs_reshuffle_and_cover_every_clip(config):
  source = builders.data_source(config.data.data_dir, "train")
  ds = pipeline.make_dataset(config, source=source)
  # Each clip has its own reference crop (own background): a fingerprint.
  epoch = lambda e: np.concatenate([ds[i]["face"].sum(axis=(1, 2, 3)).round(3)
                                    for i in range(3 * e, 3 * e + 3)])
  first, second = epoch(0), epoch(1)
  assert len(set(first)) == 12
  assert sorted(first) == sorted(second) and not np.array_equal(first, second)


def test_process_shards_cover_the_dataset_without_overlap(config):
  records = [dict(r, identity_index=i) for i, r in
             enumerate(builders.data_source(config.data.data_dir, "train"))]
  seen = []
  for p in range(4):
    ds = pipeline.make_dataset(config, train=False, process_index=p, process_count=4,
                               source=records)
    for i in range(len(ds)):
      seen.extend(ds[i]["identity_index"].tolist())
  assert sorted(seen) == list(range(len(records)))


def test_images_take_the_same_path(config):
  image_config = config.copy_and_resolve_references()
  image_config.data.frames = 1
  b = _batches(image_config, 1)[0]
  assert b["video"].shape == (4, 1, 32, 32, 3)


def test_resize_and_crop_other_resolutions(config):
  c = config.copy_and_resolve_references()
  c.data.height, c.data.width = 16, 24
  b = _batches(c, 1)[0]
  assert b["video"].shape == (4, 4, 16, 24, 3)


def test_global_batches_are_sharded_over_batch_axes(config):
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  b = sharding.shard_batch(_batches(config, 1)[0], mesh)
  assert b["video"].sharding.spec[0] == ("data", "fsdp")
  assert b["video"].shape == (4, 4, 32, 32, 3) and len(b["video"].addressable_shards) == 8


def test_bad_batch_for_processes_raises(config):
  with pytest.raises(ValueError, match="batch_size=4 is not divisible by the 3 processes"):
    pipeline.make_dataset(config, process_index=0, process_count=3)


class _CountingSource:
  def __init__(self, source):
    self.source, self.reads = source, 0

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.reads += 1
    return self.source[index]


def test_decoded_cache_gives_the_same_batches_and_reads_each_record_once(config):
  uncached = config.copy_and_resolve_references()
  uncached.data.cache_mb = 0
  source = _CountingSource(builders.data_source(config.data.data_dir, "train"))
  ds = pipeline.make_dataset(config, source=source)
  plain = pipeline.make_dataset(uncached)
  for i in range(9):  # three epochs of 12 clips in batches of 4
    got, want = ds[i], plain[i]
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert source.reads == 12  # decoded once, then served from memory


def test_decoded_cache_stays_within_its_budget(config):
  source = _CountingSource(builders.data_source(config.data.data_dir, "train"))
  one = pipeline.DecodedCache(source, max_bytes=1 << 30)[0]
  size = pipeline.DecodedCache.nbytes(one)
  assert isinstance(one["frames"], np.ndarray) and one["frames"].dtype == np.uint8
  np.testing.assert_array_equal(one["frames"], video_io.decode_frames(source[0]["frames"]))
  cache = pipeline.DecodedCache(source, max_bytes=3.5 * size)
  source.reads = 0
  for _ in range(2):
    for i in range(len(source)):
      cache[i]
  assert cache.cached_bytes == 3 * size and cache.full and len(cache) == len(source)
  assert source.reads == 12 + 9  # 3 records kept; the other 9 read on every pass
  later = cache[11]  # full: left encoded, DecodeExample decodes the frames it takes
  assert not isinstance(later["frames"], np.ndarray) or later["frames"].dtype != np.uint8
  # a latent cache's stored pixels are never read, and long records would hold encoded
  # bytes the budget does not count: both pass through uncached
  for kw in (dict(frames=False), dict(max_frames=4)):
    cache = pipeline.DecodedCache(source, max_bytes=1 << 30, **kw)
    record = cache[0]
    assert record["frames"].dtype != np.uint8 and isinstance(record["face"], bytes)
    assert cache.cached_bytes == 0
