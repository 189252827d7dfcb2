"""Probes for synthetic faces: an identity embedding and an action classifier.

Both are small CNNs trained only on ground-truth renders of *training*
identities (new clips of them are rendered on the fly: the generator is
procedural), and checked on the held-out test identities before they score
anything:

* ``identity``: one head per attribute of ``synthetic.ATTRIBUTES``; the
  embedding of an image is the concatenation of the heads' probabilities,
  L2-normalised, so the cosine of two embeddings says how surely two faces
  share their attributes. A clip's embedding is the mean of its frames'.
  Verification: the reference crop of a test identity against clips of the same
  vs other test identities, ROC AUC. Its scores are reported only when that AUC
  reaches ``MIN_AUC``.
* ``action``: per-frame CNN features (spatial layout kept), their change from
  the first frame, a temporal MLP -> ``len(synthetic.ACTIONS)`` logits.

Saved as ``.npz`` (no pickle) with a ``.json`` of its spec and held-out scores;
both written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from video_dit import evaluation
from video_dit.data import synthetic

MIN_AUC = 0.95
NUM_ACTIONS = len(synthetic.ACTIONS)
ATTRIBUTE_SIZES = tuple(synthetic.ATTRIBUTES.values())


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
  """The clips a probe reads: those the pipeline makes from a synthetic dataset."""
  data: synthetic.SyntheticSpec
  frames: int          # frames per clip after striding (the model's clip length)
  stride: int = 1
  size: int = 32       # images are resized to size x size

  @classmethod
  def from_config(cls, config) -> "ProbeSpec":
    d = config.data
    return cls(data=synthetic.spec_from_config(config), frames=d.frames, stride=d.stride,
               size=min(d.height, d.width))

  @property
  def name(self) -> str:
    s = self.data
    return (f"{s.frames}f_{s.height}x{s.width}_face{s.face_size}_{s.num_identities}ids_"
            f"test{s.test_fraction:g}_seed{s.seed}_clip{self.frames}s{self.stride}_r{self.size}")


def resize(images_nhwc: np.ndarray, size: int) -> np.ndarray:
  """uint8 (..., H, W, 3) -> uint8 (..., size, size, 3), bilinear."""
  images = np.asarray(images_nhwc)
  if images.shape[-3:-1] == (size, size):
    return images
  flat = images.reshape((-1,) + images.shape[-3:])
  out = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
                  for f in flat])
  return out.reshape(images.shape[:-3] + (size, size, 3))


def render_clips(spec: ProbeSpec, identities, clips,
                 frame: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Ground-truth clips as the eval pipeline cuts them (first frames, stride).

  ``frame``: one index per clip into those frames; only that frame is rendered and
  ``video`` is (N, S, S, 3), the same pixels as the whole clips' ``video[n, frame[n]]``.
  """
  videos, refs, ids, actions, attrs = [], [], [], [], []
  index = np.minimum(spec.stride * np.arange(spec.frames), spec.data.frames - 1)
  for n, (i, c) in enumerate(zip(identities, clips)):
    if frame is None:
      ex = synthetic.make_example(spec.data, int(i), int(c))
      videos.append(resize(ex["video"][index], spec.size))
    else:
      ex = synthetic.make_example(spec.data, int(i), int(c), frames=[int(index[frame[n]])])
      videos.append(resize(ex["video"][0], spec.size))
    refs.append(resize(ex["face"], spec.size))
    ids.append(i)
    actions.append(ex["action"])
    attrs.append(ex["attributes"])
  return dict(video=np.stack(videos), face=np.stack(refs), identity=np.asarray(ids),
              action=np.asarray(actions), attributes=np.stack(attrs))


# ----------------------------------------------------------------------------- networks


class _Trunk(nn.Module):
  """uint8 (N, S, S, 3) -> (N, S/8, S/8, C) features."""
  width: int = 32

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32) / 127.5 - 1.0
    for i, mult in enumerate((1, 2, 4, 4)):
      x = nn.Conv(self.width * mult, (3, 3), strides=1 if i == 0 else 2)(x)
      x = nn.gelu(nn.GroupNorm(num_groups=8)(x))
    return x


class IdentityNet(nn.Module):
  """Image -> per-attribute logits (a tuple, one per attribute)."""
  width: int = 32

  @nn.compact
  def __call__(self, x):
    h = _Trunk(self.width)(x)
    h = jnp.concatenate([h.mean((1, 2)), h.max((1, 2))], -1)
    h = nn.gelu(nn.Dense(256)(h))
    return tuple(nn.Dense(n, name=f"head_{k}")(h) for k, n in enumerate(ATTRIBUTE_SIZES))


class ActionNet(nn.Module):
  """Clip (N, T, S, S, 3) -> action logits (N, NUM_ACTIONS)."""
  width: int = 16

  @nn.compact
  def __call__(self, x):
    n, t = x.shape[:2]
    h = _Trunk(self.width)(x.reshape((n * t,) + x.shape[2:]))
    h = nn.Dense(64)(h.reshape(n * t, -1)).reshape(n, t, 64)
    h = jnp.concatenate([h, h - h[:, :1]], -1).reshape(n, -1)
    h = nn.gelu(nn.Dense(256)(h))
    return nn.Dense(NUM_ACTIONS)(h)


def _softmax(logits) -> np.ndarray:
  """On the host: the probes' outputs are small, and eager jax ops would compile one
  program per shape."""
  z = np.asarray(logits, np.float32)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def identity_embedding(logits) -> np.ndarray:
  """Concatenated attribute probabilities, L2-normalised."""
  e = np.concatenate([_softmax(l) for l in logits], -1)
  return e / np.linalg.norm(e, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- scores


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Probability that a positive outscores a negative (ties count half)."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  pos, neg = scores[labels], scores[~labels]
  if not len(pos) or not len(neg):
    raise ValueError("ROC AUC needs both positive and negative pairs")
  order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
  ranks = np.empty(len(order))
  allv = np.concatenate([pos, neg])[order]
  # average ranks over ties
  i = 0
  while i < len(allv):
    j = i
    while j + 1 < len(allv) and allv[j + 1] == allv[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  r_pos = ranks[:len(pos)].sum()
  return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


# ----------------------------------------------------------------------------- probes


@functools.lru_cache(maxsize=None)
def _compiled_apply(net: nn.Module):
  """One jitted apply per network (flax modules compare by their fields), so a probe
  loaded again, or a second probe of the same kind, reuses the compiled programs."""
  return jax.jit(net.apply, compiler_options=evaluation.FULL_OPTIMISATION)


def _net(kind: str) -> nn.Module:
  return IdentityNet() if kind == "identity" else ActionNet()


def init_params(kind: str, spec: ProbeSpec, seed: int = 0):
  """A probe network's fresh parameters for ``spec``'s inputs (under jit: one program,
  not one per op)."""
  return jax.jit(_net(kind).init)(jax.random.key(seed), _dummy(kind, spec))


class Probe:
  """A trained identity or action probe with its spec and held-out scores."""

  def __init__(self, kind: str, spec: ProbeSpec, params, scores: dict | None = None):
    if kind not in ("identity", "action"):
      raise ValueError(f"probe kind '{kind}' is unknown; use 'identity' or 'action'")
    self.kind, self.spec, self.params, self.scores = kind, spec, params, dict(scores or {})
    self.net = _net(kind)
    self._apply = _compiled_apply(self.net)

  # -- inference
  def _batched(self, x: np.ndarray, batch: int = 64) -> list:
    """The network over ``x`` in chunks of ``batch``. A shorter input is padded to the
    next power of two, so any input compiles at most log2(batch) + 1 shapes, shared by
    every probe of this kind in the process."""
    out = []
    for i in range(0, len(x), batch):
      chunk = x[i:i + batch]
      size = min(batch, 1 << (len(chunk) - 1).bit_length())
      pad = size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
      res = self._apply(self.params, chunk)
      out.append(jax.tree.map(lambda r, k=len(chunk) - pad: np.asarray(r)[:k], res))
    return out

  def embed_images(self, images_nhwc: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, D) unit identity embeddings."""
    self._need("identity")
    outs = self._batched(resize(images_nhwc, self.spec.size))
    return np.concatenate([identity_embedding(o) for o in outs])

  def embed_frames(self, videos_nthwc: np.ndarray) -> np.ndarray:
    """(N, T, H, W, 3) uint8 -> (N, T, D) per-frame identity embeddings."""
    v = np.asarray(videos_nthwc)
    return self.embed_images(v.reshape((-1,) + v.shape[2:])).reshape(v.shape[:2] + (-1,))

  def clip_attributes(self, videos_nthwc: np.ndarray) -> np.ndarray:
    """(N, T, H, W, 3) uint8 -> (N, A) the attribute values read from each clip (argmax
    of the per-frame probabilities averaged over frames), attributes in
    ``synthetic.ATTRIBUTES`` order."""
    self._need("identity")
    v = np.asarray(videos_nthwc)
    outs = self._batched(resize(v.reshape((-1,) + v.shape[2:]), self.spec.size))
    per_attr = [np.concatenate([_softmax(o[k]) for o in outs])
                for k in range(len(ATTRIBUTE_SIZES))]
    return np.stack([p.reshape(v.shape[:2] + (-1,)).mean(1).argmax(-1) for p in per_attr], -1)

  def embed_clips(self, videos_nthwc: np.ndarray) -> np.ndarray:
    """(N, T, H, W, 3) uint8 -> (N, D): the mean frame embedding, normalised."""
    e = self.embed_frames(videos_nthwc).mean(1)
    return e / np.linalg.norm(e, axis=-1, keepdims=True)

  def action_logits(self, videos_nthwc: np.ndarray) -> np.ndarray:
    self._need("action")
    v = np.asarray(videos_nthwc)
    if v.shape[1] != self.spec.frames:
      raise ValueError(f"the action probe reads {self.spec.frames}-frame clips, got "
                       f"{v.shape[1]}; train a probe for this clip length")
    return np.concatenate(self._batched(resize(v, self.spec.size), batch=32))

  def _need(self, kind: str) -> None:
    if self.kind != kind:
      raise ValueError(f"this is the {self.kind} probe; the {kind} probe does that")

  @property
  def verified(self) -> bool:
    """Whether held-out identities were told apart well enough to report its scores."""
    return self.kind == "action" or self.scores.get("roc_auc", 0.0) >= MIN_AUC

  # -- storage
  def save(self, path: str) -> None:
    """``path``.npz (parameters) and ``path``.json (spec, scores), atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    flat = {"/".join(k): np.asarray(v)
            for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(self.params)).items()}
    meta = dict(kind=self.kind, spec=dict(dataclasses.asdict(self.spec)), scores=self.scores)
    for suffix, write in ((".npz", lambda f: np.savez(f, **flat)),
                          (".json", lambda f: f.write(json.dumps(meta, indent=2).encode()))):
      tmp = f"{path}{suffix}.tmp{os.getpid()}"
      with open(tmp, "wb") as f:
        write(f)
      os.replace(tmp, path + suffix)

  @classmethod
  def load(cls, path: str) -> "Probe":
    for suffix in (".npz", ".json"):
      if not os.path.isfile(path + suffix):
        raise FileNotFoundError(f"no probe at {path}{suffix}; train one with "
                                "python -m tools.train_identity_probe --config=...")
    with open(path + ".json") as f:
      meta = json.load(f)
    spec = dict(meta["spec"])
    spec["data"] = synthetic.SyntheticSpec(**spec["data"])
    with np.load(path + ".npz", allow_pickle=False) as z:
      params = flax.traverse_util.unflatten_dict({tuple(k.split("/")): z[k] for k in z.files})
    probe = cls(meta["kind"], ProbeSpec(**spec), params, meta["scores"])
    expected = jax.eval_shape(probe.net.init, jax.random.key(0), _dummy(probe.kind, probe.spec))
    if jax.tree.map(np.shape, expected) != jax.tree.map(np.shape, params):
      raise ValueError(f"the probe {path} does not match this code's {meta['kind']} network; "
                       "retrain it with tools.train_identity_probe")
    return probe


def _dummy(kind: str, spec: ProbeSpec) -> np.ndarray:
  shape = (1, spec.size, spec.size, 3) if kind == "identity" else \
      (1, spec.frames, spec.size, spec.size, 3)
  return np.zeros(shape, np.uint8)


def default_path(data_dir: str, kind: str, spec: ProbeSpec) -> str:
  return os.path.join(data_dir, "probes", f"{kind}_{spec.name}")


# ----------------------------------------------------------------------------- training


def _train_stream(spec: ProbeSpec, rng: np.random.Generator, clips: int,
                  one_frame: bool = False) -> Iterator[dict]:
  """Endless batches of ``clips`` fresh ground-truth clips of training identities
  (``one_frame``: one random frame of each, (N, S, S, 3)).

  Clip numbers start above the dataset's own, so the probes see other renders of
  the training identities than the DiT did (identities stay train-only).
  """
  train_ids = np.asarray(spec.data.identity_ids("train"))
  while True:
    ids = rng.choice(train_ids, clips)
    clip_ids = spec.data.clips_per_identity + rng.integers(0, 1 << 30, clips)
    frame = rng.integers(0, spec.frames, clips) if one_frame else None
    yield render_clips(spec, ids, clip_ids, frame)


def _held_out(spec: ProbeSpec, clips_per_identity: int) -> dict:
  test_ids = np.repeat(np.asarray(spec.data.identity_ids("test")), clips_per_identity)
  clip_ids = np.tile(np.arange(clips_per_identity), len(test_ids) // clips_per_identity)
  return render_clips(spec, test_ids, clip_ids)


def verify_identity(probe: Probe, held: dict) -> dict:
  """References vs clips of held-out identities: ROC AUC and the similarity gap."""
  ref = probe.embed_images(held["face"])
  clip = probe.embed_clips(held["video"])
  sim = ref @ clip.T
  same = held["identity"][:, None] == held["identity"][None, :]
  return dict(roc_auc=roc_auc(sim.ravel(), same.ravel()),
              matched_cosine=float(sim[same].mean()), mismatched_cosine=float(sim[~same].mean()),
              num_identities=int(len(np.unique(held["identity"]))), num_clips=int(len(clip)))


DEFAULT_STEPS = {"identity": 600, "action": 200}
DEFAULT_BATCH = {"identity": 64, "action": 32}  # action batches are clips (rendering costs)


def train_probe(kind: str, spec: ProbeSpec, steps: int | None = None, batch: int | None = None,
                lr: float = 2e-3, seed: int = 0, held_out_clips: int = 4,
                log=print) -> Probe:
  """Trains a probe on training identities and scores it on held-out ones."""
  steps, batch = steps or DEFAULT_STEPS[kind], batch or DEFAULT_BATCH[kind]
  net = _net(kind)
  params = init_params(kind, spec, seed)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps),
                   weight_decay=1e-4)
  opt = tx.init(params)

  def loss_fn(params, x, y):
    out = net.apply(params, x)
    if kind == "identity":
      return sum(optax.softmax_cross_entropy_with_integer_labels(o, y[:, k]).mean()
                 for k, o in enumerate(out)) / len(out)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

  @functools.partial(jax.jit, compiler_options=evaluation.FULL_OPTIMISATION)
  def step(params, opt, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  rng = np.random.default_rng([seed, 17])
  # Identity: half reference crops, half single frames of clips (only that frame is
  # rendered); action: whole clips.
  stream = _train_stream(spec, rng, batch // 2 if kind == "identity" else batch,
                         one_frame=kind == "identity")
  t0, loss = time.time(), float("nan")
  for i in range(steps):
    b = next(stream)
    if kind == "identity":
      x = np.concatenate([b["face"], b["video"]])
      y = np.concatenate([b["attributes"], b["attributes"]])
    else:
      x, y = b["video"], b["action"]
    params, opt, loss = step(params, opt, x, y)
    if log and (i + 1) % max(1, steps // 10) == 0:
      log(f"{kind} probe step {i + 1}/{steps}: loss {float(loss):.4f} ({time.time() - t0:.0f}s)")
  probe = Probe(kind, spec, jax.device_get(params))
  held = _held_out(spec, held_out_clips)
  if kind == "identity":
    probe.scores = verify_identity(probe, held)
  else:
    pred = probe.action_logits(held["video"]).argmax(-1)
    probe.scores = dict(accuracy=float((pred == held["action"]).mean()),
                        chance=1.0 / NUM_ACTIONS, num_clips=int(len(pred)))
  probe.scores.update(train_steps=steps, train_seconds=round(time.time() - t0, 1),
                      final_loss=float(loss), seed=seed)
  return probe


def load_or_train(config, kind: str, path: str | None = None, train: bool = True,
                  log=print, **kwargs) -> Probe:
  """The config's probe from ``path`` (default under its data_dir), trained if missing."""
  spec = ProbeSpec.from_config(config)
  path = path or default_path(config.data.data_dir, kind, spec)
  if os.path.isfile(path + ".npz") or not train:
    probe = Probe.load(path)
    if probe.spec != spec:
      raise ValueError(f"the probe {path} was trained for {probe.spec.name}, not for this "
                       f"config's {spec.name}; retrain it or point to the right one")
    return probe
  log(f"training the {kind} probe for {spec.name} (saved to {path})")
  probe = train_probe(kind, spec, log=log, **kwargs)
  if jax.process_index() == 0:
    probe.save(path)
  return probe
