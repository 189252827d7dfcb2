r"""Samples videos of a reference face doing what a prompt says, from a training workdir.

  python -m experiments.sample --workdir=W --face=face.png --prompt="a person nods" \
      --out=samples/ [--step=N --seed=S --num_steps=K --sampler=heun \
      --text_scale=4 --face_scale=2 --cache_threshold=0.1 --num_frames=F --raw \
      --face_is_crop --overwrite] \
      [--consent="I am the person in this photo and agree to this video"]
  python -m experiments.sample --workdir=W --batch_file=requests.jsonl --out=samples/

A frame-conditioned model (trained with ``frame_cond=R``) also takes given frames:
  --first_frame=IMG        image-to-video: the clip starts from this still (any image;
                           --face is then optional and adds the identity reference)
  --extend=VIDEO           continues a video (kept at the start of the output)
  --num_frames=N           beyond the training length: sliding windows, each given the last
                           --overlap frames made (default half a clip); the face
                           conditions every window

Any model, text-to-video beyond the training length:
  --num_frames=N --windows=joint   co-denoised windows overlapping by --overlap frames
                           (default half a clip), denoised together and cross-faded: no
                           seams, and the reference conditions every window

``--batch_file`` is JSON lines of {"face": ..., "prompt": ..., "seed": ..., "name": ...}
(and optionally "first_frame" or "extend").
Writes per sample .mp4, .gif, .png (reference face + frames) and provenance .json.
"""

from absl import app
from absl import flags

from video_dit import cli, sampling

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints/.")
_FACE = flags.DEFINE_string("face", None, "Reference face photo (or crop, see --face_is_crop).")
_PROMPT = flags.DEFINE_string("prompt", None, "What the person does.")
_OUT = flags.DEFINE_string("out", "samples", "Output folder.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampler steps; default the config's.")
_SAMPLER = flags.DEFINE_string("sampler", None, "euler|heun (flow), ddim|dpmpp_2m|ddpm.")
_TEXT_SCALE = flags.DEFINE_float("text_scale", None, "Text guidance scale.")
_FACE_SCALE = flags.DEFINE_float("face_scale", None, "Identity guidance scale.")
_CACHE = flags.DEFINE_float("cache_threshold", None,
                            "Step cache: skip the DiT blocks while the accumulated relative "
                            "change stays under this (0 = off; euler/shortcut only).")
_FAST = flags.DEFINE_bool("fast", False, "The checkpoint's cheapest good sampler: a shortcut "
                          "model's 4 steps, a guidance-distilled model's 4 one-pass steps, "
                          "else 4 Euler steps (explicit sampler flags still apply).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 0, "Frames; default the config's. Beyond "
                                   "it a frame-conditioned model samples sliding windows.")
_FIRST_FRAME = flags.DEFINE_string("first_frame", None, "Image-to-video: the first frame "
                                   "(a frame-conditioned model).")
_EXTEND = flags.DEFINE_string("extend", None, "A video to continue (a frame-conditioned "
                              "model).")
_OVERLAP = flags.DEFINE_integer("overlap", 0, "Frames each sliding window is given of the "
                                "one before, or co-denoised windows share (0 = half a clip).")
_WINDOWS = flags.DEFINE_enum("windows", "sliding", ["sliding", "joint"],
                             "Beyond the training length: 'sliding' windows each given the "
                             "last frames made (a frame-conditioned model; others make one "
                             "longer clip), or 'joint': co-denoised windows (any model).")
_BATCH_FILE = flags.DEFINE_string("batch_file", None, "JSON lines of face/prompt/seed.")
_RAW = flags.DEFINE_bool("raw", False, "Use the raw parameters instead of the EMA.")
_FACE_IS_CROP = flags.DEFINE_bool("face_is_crop", False,
                                  "The face image is already a crop: skip face detection.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace outputs that exist in --out.")
_CONSENT = flags.DEFINE_string(
    "consent", None, "The consent of the person in the face photo, in words (needed for a "
    "photo; recorded in every output's provenance).")


def main(argv):
  cli.setup(argv)
  if _BATCH_FILE.value:
    requests = sampling.read_requests(_BATCH_FILE.value)
  else:
    if not (_FACE.value or _FIRST_FRAME.value or _EXTEND.value) or _PROMPT.value is None:
      raise app.UsageError("give --face (or --first_frame / --extend) and --prompt, or "
                           "--batch_file")
    requests = [dict(face=_FACE.value, prompt=_PROMPT.value, seed=_SEED.value)]
  written = sampling.generate(
      _WORKDIR.value, requests, _OUT.value, step=_STEP.value,
      sampler=dict(sampler=_SAMPLER.value, num_steps=_NUM_STEPS.value,
                   text_scale=_TEXT_SCALE.value, face_scale=_FACE_SCALE.value,
                   cache_threshold=_CACHE.value),
      num_frames=_NUM_FRAMES.value, ema=not _RAW.value, face_is_crop=_FACE_IS_CROP.value,
      overwrite=_OVERWRITE.value, consent=_CONSENT.value, fast=_FAST.value,
      first_frame=_FIRST_FRAME.value, extend=_EXTEND.value, overlap=_OVERLAP.value,
      windows=_WINDOWS.value)
  for w in written:
    print(f"{w['prompt']!r} seed {w['seed']} (step {w['step']}): " + " ".join(w["files"]))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
