"""Synthetic identities: procedural faces doing captioned actions (numpy + PIL).

The built-in benchmark that runs anywhere. An identity is a vector of
independent discrete attributes (``ATTRIBUTES``); an example is a triad

    (reference face crop, caption of an action, video of that identity doing it)

with the ground-truth identity and action ids stored for evaluation.

* Drawn at a supersampled resolution and box-downsampled: anti-aliased.
* Backgrounds vary per video and are drawn from their own random stream, so
  they carry no information about the identity.
* The reference face is rendered separately: frontal, neutral, on another
  background and at another scale, so copying its pixels cannot solve the task.
* Every clip starts from the same neutral pose; the action unfolds over it.
* Deterministic: everything about example (identity i, clip j) comes from
  ``np.random.default_rng([seed, i, j, stream])``. Identities are split
  disjointly between train and test by id.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Each attribute: name -> number of values. Drawn independently, uniformly.
ATTRIBUTES = {
    "face_shape": 4,   # round, oval, long, square
    "skin_tone": 6,
    "hair_color": 6,
    "hair_style": 5,   # bald, short, long, bun, fringe
    "eye_color": 5,
    "eye_spacing": 3,
    "nose": 3,         # small, long, wide
    "mouth": 3,        # narrow, medium, wide (lip colour varies too)
    "glasses": 3,      # none, round, square
    "beard": 3,        # none, stubble, full
}
SKIN = [(255, 224, 196), (241, 194, 150), (224, 172, 125), (198, 134, 90), (141, 85, 54),
        (96, 60, 40)]
HAIR = [(20, 20, 20), (90, 56, 30), (170, 120, 60), (230, 200, 120), (150, 40, 30),
        (200, 200, 205)]
IRIS = [(60, 40, 20), (40, 90, 170), (60, 130, 70), (120, 120, 130), (140, 100, 40)]
LIPS = [(190, 90, 90), (160, 70, 80), (210, 120, 110)]

# Actions: (name, caption templates). Captions are plain; {who} varies.
ACTIONS = (
    ("nod", ("{who} nods", "{who} nods their head")),
    ("shake_head", ("{who} shakes their head", "{who} shakes their head no")),
    ("smile", ("{who} smiles", "{who} breaks into a smile")),
    ("open_mouth", ("{who} opens their mouth", "{who} opens their mouth wide")),
    ("blink", ("{who} blinks", "{who} closes their eyes and blinks")),
    ("turn_left", ("{who} turns their head to the left", "{who} looks to the left")),
    ("turn_right", ("{who} turns their head to the right", "{who} looks to the right")),
    ("move_left", ("{who} moves to the left", "{who} slides to the left")),
    ("move_right", ("{who} moves to the right", "{who} slides to the right")),
    ("zoom_in", ("the camera zooms in on {who}", "{who} comes closer")),
    ("zoom_out", ("the camera zooms out from {who}", "{who} moves away")),
)
ACTION_NAMES = tuple(a for a, _ in ACTIONS)
WHO = ("a person", "the person", "someone", "a man or woman")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to render; validated on construction."""
  num_identities: int = 200
  clips_per_identity: int = 8
  frames: int = 16
  height: int = 64
  width: int = 64
  face_size: int = 64          # reference face crop side
  test_fraction: float = 0.2   # the last ids form the test split
  seed: int = 0

  def __post_init__(self):
    for name, lo, hi in (("frames", 8, 64), ("height", 32, 256), ("width", 32, 256),
                         ("face_size", 32, 256)):
      v = getattr(self, name)
      if not lo <= v <= hi:
        raise ValueError(f"synthetic {name}={v} is outside [{lo}, {hi}].")
    if self.num_identities < 2 or self.clips_per_identity < 1:
      raise ValueError(f"synthetic num_identities={self.num_identities} must be >= 2 and "
                       f"clips_per_identity={self.clips_per_identity} >= 1.")
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"synthetic test_fraction={self.test_fraction} must be in (0, 1).")

  @property
  def num_test(self) -> int:
    return max(1, int(round(self.num_identities * self.test_fraction)))

  def identity_ids(self, split: str) -> range:
    """Train and test identities are disjoint ranges of ids."""
    n_train = self.num_identities - self.num_test
    if split == "train":
      return range(n_train)
    if split == "test":
      return range(n_train, self.num_identities)
    raise ValueError(f"split '{split}' is unknown; use 'train' or 'test'.")


def spec_from_config(config) -> SyntheticSpec:
  """The spec of the synthetic dataset an experiment config builds on first use."""
  d = config.data
  return SyntheticSpec(
      num_identities=d.num_identities, clips_per_identity=d.clips_per_identity,
      frames=max(8, d.frames * d.stride), height=d.height, width=d.width,
      face_size=config.identity.face_size or d.height, test_fraction=d.test_fraction,
      seed=config.seed)


def identity_attributes(seed: int, identity: int) -> dict[str, int]:
  """The attribute vector of an identity (independent uniform draws)."""
  rng = np.random.default_rng([seed, identity, 0, 0])
  return {name: int(rng.integers(n)) for name, n in ATTRIBUTES.items()}


# ----------------------------------------------------------------------------- poses


def _neutral():
  return dict(yaw=0.0, pitch=0.0, dx=0.0, dy=0.0, scale=1.0, mouth_open=0.0, smile=0.0,
              eye_open=1.0)


def action_poses(action: int, frames: int, amplitude: float = 1.0) -> list[dict]:
  """Per-frame pose of an action; frame 0 is always the neutral pose."""
  name = ACTION_NAMES[action]
  poses = []
  for f in range(frames):
    u = f / (frames - 1)                     # 0 .. 1 over the clip
    ramp = min(1.0, 1.6 * u) * amplitude     # reaches the end pose before the last frame
    wave = math.sin(2 * math.pi * 2 * u) * amplitude   # two cycles
    p = _neutral()
    if name == "nod":
      p["pitch"] = 0.9 * wave
    elif name == "shake_head":
      p["yaw"] = 0.9 * wave
    elif name == "smile":
      p["smile"] = ramp
    elif name == "open_mouth":
      p["mouth_open"] = ramp
    elif name == "blink":
      p["eye_open"] = 1.0 - abs(math.sin(2 * math.pi * 1.5 * u)) * amplitude
    elif name == "turn_left":
      p["yaw"] = -ramp
    elif name == "turn_right":
      p["yaw"] = ramp
    elif name == "move_left":
      p["dx"] = -0.28 * ramp
    elif name == "move_right":
      p["dx"] = 0.28 * ramp
    elif name == "zoom_in":
      p["scale"] = 1.0 + 0.45 * ramp
    elif name == "zoom_out":
      p["scale"] = 1.0 - 0.35 * ramp
    poses.append(p)
  return poses


# ----------------------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
  """A vertical gradient between two random colours plus a few soft shapes."""
  c0, c1 = rng.integers(30, 226, 3), rng.integers(30, 226, 3)
  ramp = np.linspace(0.0, 1.0, h)[:, None, None]
  img = (c0 * (1 - ramp) + c1 * ramp) * np.ones((1, w, 1))
  image = Image.fromarray(img.astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(1, 4))):
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(0.05, 0.25) * min(h, w)
    color = tuple(int(v) for v in rng.integers(30, 226, 3))
    if rng.uniform() < 0.5:
      draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    else:
      draw.rectangle([x - r, y - r * 0.6, x + r, y + r * 0.6], fill=color)
  return image


def _draw_face(draw: ImageDraw.ImageDraw, a: dict[str, int], pose: dict, cx: float,
               cy: float, size: float) -> None:
  """Draws one face centred at (cx, cy); ``size`` is the face half-width in pixels."""
  s = size * pose["scale"]
  cx, cy = cx + pose["dx"] * size * 4, cy + pose["dy"] * size * 4
  aspect = (1.0, 1.2, 1.4, 1.12)[a["face_shape"]]
  fw, fh = s * (1.0 - 0.15 * abs(pose["yaw"])), s * aspect
  skin, hair = SKIN[a["skin_tone"]], HAIR[a["hair_color"]]
  # Features move with the head's rotation: yaw sideways, pitch up/down.
  fx, fy = cx + pose["yaw"] * 0.35 * s, cy + pose["pitch"] * 0.22 * fh
  style = a["hair_style"]

  if style == 2:  # long hair falls behind the head
    draw.rounded_rectangle([cx - 1.25 * fw, cy - 1.05 * fh, cx + 1.25 * fw, cy + 1.15 * fh],
                           radius=0.6 * fw, fill=hair)
  if style == 3:  # bun on top
    draw.ellipse([cx - 0.45 * fw, cy - 1.5 * fh, cx + 0.45 * fw, cy - 0.75 * fh], fill=hair)
  draw.ellipse([cx - 1.12 * fw, cy - 0.15 * fh, cx - 0.88 * fw, cy + 0.25 * fh], fill=skin)
  draw.ellipse([cx + 0.88 * fw, cy - 0.15 * fh, cx + 1.12 * fw, cy + 0.25 * fh], fill=skin)
  box = [cx - fw, cy - fh, cx + fw, cy + fh]
  if a["face_shape"] == 3:
    draw.rounded_rectangle(box, radius=0.45 * fw, fill=skin)
  else:
    draw.ellipse(box, fill=skin)

  if a["beard"] == 1:  # stubble: a darker shade of the skin over the jaw
    shade = tuple(int(0.75 * c) for c in skin)
    draw.chord([fx - 0.85 * fw, cy - 0.1 * fh, fx + 0.85 * fw, cy + fh], 10, 170, fill=shade)
  elif a["beard"] == 2:
    draw.chord([fx - 0.95 * fw, cy - 0.3 * fh, fx + 0.95 * fw, cy + 1.08 * fh], 5, 175,
               fill=hair)

  if style in (1, 2, 3, 4):  # hair cap over the top of the head
    depth = {1: 0.55, 2: 0.6, 3: 0.5, 4: 0.9}[style]
    draw.chord([cx - 1.05 * fw, cy - 1.12 * fh, cx + 1.05 * fw, cy - 1.12 * fh + 2 * depth * fh],
               180, 360, fill=hair)
    if style == 4:  # fringe: a straight cut across the forehead
      draw.rectangle([cx - 0.9 * fw, cy - 0.75 * fh, cx + 0.9 * fw, cy - 0.35 * fh], fill=hair)

  # Eyes.
  spacing = (0.3, 0.38, 0.46)[a["eye_spacing"]] * fw
  ey = fy - 0.12 * fh
  ew, eh = 0.2 * fw, 0.12 * fh * max(pose["eye_open"], 0.08)
  for side in (-1, 1):
    ex = fx + side * spacing
    draw.ellipse([ex - ew, ey - eh, ex + ew, ey + eh], fill=(250, 250, 250))
    if pose["eye_open"] > 0.3:
      r = min(0.11 * fw, eh)
      ix = ex + pose["yaw"] * 0.08 * fw
      draw.ellipse([ix - r, ey - r, ix + r, ey + r], fill=IRIS[a["eye_color"]])
    draw.line([ex - ew, ey - 1.6 * eh - 0.04 * fh, ex + ew, ey - 1.6 * eh - 0.06 * fh],
              fill=hair, width=max(1, int(0.05 * fw)))  # brow
  if a["glasses"]:
    lw = max(1, int(0.06 * fw))
    for side in (-1, 1):
      ex = fx + side * spacing
      g = [ex - 1.35 * ew, ey - 0.2 * fh, ex + 1.35 * ew, ey + 0.2 * fh]
      if a["glasses"] == 1:
        draw.ellipse(g, outline=(30, 30, 30), width=lw)
      else:
        draw.rectangle(g, outline=(30, 30, 30), width=lw)
    draw.line([fx - spacing + 1.35 * ew, ey, fx + spacing - 1.35 * ew, ey], fill=(30, 30, 30),
              width=lw)

  # Nose.
  nose_len, nose_w = {0: (0.25, 0.1), 1: (0.4, 0.1), 2: (0.28, 0.2)}[a["nose"]]
  nx = fx + pose["yaw"] * 0.12 * fw
  shade = tuple(int(0.8 * c) for c in skin)
  draw.polygon([(nx, ey + 0.05 * fh), (nx - nose_w * fw, ey + nose_len * fh),
                (nx + nose_w * fw, ey + nose_len * fh)], fill=shade)

  # Mouth: width by attribute; smile bends it, mouth_open opens it.
  mw = (0.28, 0.36, 0.46)[a["mouth"]] * fw
  my = fy + 0.45 * fh
  lips = LIPS[a["mouth"]]
  opening = pose["mouth_open"] * 0.22 * fh
  curve = 0.04 * fh + pose["smile"] * 0.16 * fh
  if opening > 0.02 * fh:
    draw.ellipse([fx - mw, my - opening, fx + mw, my + opening], fill=(70, 20, 30),
                 outline=lips, width=max(1, int(0.05 * fw)))
  else:
    draw.chord([fx - mw, my - curve, fx + mw, my + curve], 0, 180, fill=lips)
    if pose["smile"] > 0.3:  # teeth
      draw.chord([fx - 0.8 * mw, my - 0.5 * curve, fx + 0.8 * mw, my + 0.6 * curve], 0, 180,
                 fill=(245, 245, 240))


def _supersample(h: int, w: int) -> int:
  return max(2, min(4, 512 // max(h, w)))


def render_frames(attrs: dict[str, int], poses: list[dict], background: Image.Image,
                  face_scale: float = 0.22) -> np.ndarray:
  """(T, H, W, 3) uint8 frames of ``attrs`` in ``poses`` over ``background``."""
  w, h = background.size
  ss = _supersample(h, w)
  bg = background.resize((w * ss, h * ss), Image.BILINEAR)
  frames = []
  for pose in poses:
    img = bg.copy()
    _draw_face(ImageDraw.Draw(img), attrs, pose, w * ss / 2, h * ss / 2,
               face_scale * min(h, w) * ss)
    frames.append(np.asarray(img.resize((w, h), Image.BOX)))
  return np.stack(frames)


def render_reference(attrs: dict[str, int], size: int, rng: np.random.Generator) -> np.ndarray:
  """(S, S, 3) uint8 frontal, neutral crop on a plain background of its own."""
  color = tuple(int(v) for v in rng.integers(60, 200, 3))
  background = Image.new("RGB", (size, size), color)
  return render_frames(attrs, [_neutral()], background, face_scale=0.3)[0]


def caption(action: int, rng: np.random.Generator) -> str:
  templates = ACTIONS[action][1]
  return templates[int(rng.integers(len(templates)))].format(who=WHO[int(rng.integers(len(WHO)))])


def make_example(spec: SyntheticSpec, identity: int, clip: int,
                 frames: Sequence[int] | None = None) -> dict:
  """One triad; deterministic in (spec.seed, identity, clip). ``frames``: render only
  these frame indices of the clip (the same pixels as the whole clip's frames)."""
  attrs = identity_attributes(spec.seed, identity)
  rng_action = np.random.default_rng([spec.seed, identity, clip, 1])
  rng_bg = np.random.default_rng([spec.seed, identity, clip, 2])
  rng_ref = np.random.default_rng([spec.seed, identity, clip, 3])
  action = int(rng_action.integers(len(ACTIONS)))
  amplitude = float(rng_action.uniform(0.7, 1.0))
  poses = action_poses(action, spec.frames, amplitude)
  if frames is not None:
    poses = [poses[f] for f in frames]
  video = render_frames(attrs, poses, _background(rng_bg, spec.height, spec.width))
  return dict(
      video=video,
      face=render_reference(attrs, spec.face_size, rng_ref),
      caption=caption(action, rng_action),
      identity=identity,
      action=action,
      attributes=np.asarray([attrs[k] for k in ATTRIBUTES], np.int32),
      key=f"id{identity:06d}_clip{clip:04d}")


def examples(spec: SyntheticSpec, split: str) -> Iterator[dict]:
  """All examples of a split, identity-major."""
  for identity in spec.identity_ids(split):
    for clip in range(spec.clips_per_identity):
      yield make_example(spec, identity, clip)
