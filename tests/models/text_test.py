import numpy as np

from video_dit.models.text import HashTokenizer


def test_hash_tokenizer_is_stable_padded_and_truncated():
  tok = HashTokenizer(vocab_size=1000, max_len=6)
  ids = tok(["A person nods.", "a PERSON nods", "the camera zooms out from a person"])
  assert ids.shape == (3, 6) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids[0, :3], ids[1, :3])  # case-insensitive words
  assert ids[0, 3] != 0 and ids[0, 4] == 0               # '.' is a token, then padding
  assert np.all(ids[2] > 0) and np.all(ids < 1000)       # truncated to max_len
  assert len(set(ids[2].tolist())) == 6                  # six distinct words kept
  np.testing.assert_array_equal(HashTokenizer(1000, 6)(["a person nods."]), ids[:1])
