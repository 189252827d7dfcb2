"""Identity-consistent video DiT on the built-in synthetic faces.

Launch (full size, 16x64x64 clips, DiT-S, tubelet 2x4x4 = 2048 tokens):
  python -m experiments.train --config=configs/synthetic_faces.py --workdir=runs/faces
Variants: --config=configs/synthetic_faces.py:variant=B,frames=32,res=128,patch=2x8x8

Presets:
  :identity_bench  the config that shows the face engine learning (8x32x32 clips in
                   the linear codec's 4x8x8x24 latents, 64 video tokens + 16
                   reference-face tokens, width 128, depth 4; 6000 steps).
  :quickstart      the same model and recipe, 3000 steps
                   (``python -m experiments.quickstart``).
                   ``codec=pixels`` trains either on 2x8x8 pixel tubelets instead.
  :runlocal        tests and laptops (DiT-mu, 8x32x32 clips, 64 tokens, seconds).
``steps=N`` overrides a preset's number of training steps. ``frame_cond=R`` gives a share R
of the training examples some of their frames (``train.context_rate``): the model then
also does image-to-video, extension and long videos (``video_dit/diffusion/context.py``),
e.g. ``quickstart,frame_cond=0.5``; ``--config.ckpt.init_from=runs/quickstart`` starts it
from a trained text-to-video model.
``distill=guidance|shortcut,teacher=W`` makes the config a cheaper student of the trained
DiT in workdir W (same model arguments as W's): one-pass guidance, or few-step
(``configs/common.py:distill``), e.g.
``quickstart,distill=guidance,teacher=runs/quickstart`` or
``quickstart,distill=shortcut,teacher=runs/quickstart``.
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="S", frames=16, res=64, patch="2x4x4", runlocal=False,
                         identity_bench=False, quickstart=False, steps=0, codec="",
                         channels=24, whiten=False, distill="", teacher="", frame_cond=0.0)
  if arg.identity_bench + arg.quickstart + arg.runlocal > 1:
    raise ValueError("choose one of the presets identity_bench, quickstart, runlocal")
  config = common.base_config()
  common.set_size(config, arg.variant)
  config.model.patch = common.parse_patch(arg.patch)
  config.data.update(frames=arg.frames, height=arg.res, width=arg.res)
  if arg.identity_bench or arg.quickstart:
    identity_bench(config, steps=6_000 if arg.identity_bench else 3_000)
  if arg.quickstart:
    config.ckpt.every_steps = 250
  if arg.runlocal:
    common.runlocal(config)
  # The presets learn on the linear codec's latents, other configs on pixels. At step
  # 3000 the latents beat the pixel recipe on action, FVD, frame-to-frame flicker and
  # cost, and match it on identity (README "What the quickstart shows"); each token
  # paints a window of 4x4 latent cells (16x16 pixels) over its 2x2, so the samples show
  # no token grid.
  codec = arg.codec or ("pca" if arg.identity_bench or arg.quickstart else "pixels")
  if codec == "pca":
    pca_latents(config, arg.channels, arg.whiten)
    if arg.identity_bench or arg.quickstart:
      config.model.update(head="overlap", head_margin=1)
  elif codec != "pixels":
    raise ValueError(f"codec={codec} is unknown; use pixels or pca")
  if arg.frame_cond:  # frame conditioning: image-to-video, extension, long videos
    config.train.context_rate = arg.frame_cond
  if arg.distill:
    common.distill(config, arg.distill, arg.teacher)
    if arg.runlocal:
      config.total_steps = 20
  if arg.steps:
    config.total_steps = arg.steps
  config.lock()
  return config


def identity_bench(c, steps: int) -> None:
  """The recipe that makes identity transfer on a CPU budget (measured in the README).

  * Tokens of 2x8x8 pixels on 8x32x32 clips: 64 tokens, so steps are cheap. get_config
    puts the presets on the linear codec's latents (a token holds 96 values; 384 with
    ``codec=pixels``, more than the width of 128).
  * The model predicts x0 (a velocity target would ask it to reproduce the noise).
  * Training times are logit-normal with mean 1.5 (mostly high noise), where the
    coarse layout that carries identity (hair, skin, face shape) is decided; the
    token-count shift is off (with 64 tokens it would shift toward low noise).
  * The reference face enters twice: cross-attention to its identity tokens, and its
    patches as in-context tokens the video attends to.
  * Each token paints a window beyond its tubelet and neighbouring windows blend
    (model.head='overlap'; 12x12 pixels over 8x8 here, 4x4 latent cells over 2x2 in
    get_config's latents): no token grid in the samples.
  * A fifth of the training times are uniform (diffusion.t_uniform=0.2), so the low-noise
    end the logit-normal hardly reaches is trained too.
  * The loss also counts the error of the change between consecutive frames
    (diffusion.motion_weight=1; measured on the latents, not with codec=pixels): the
    model is charged for flicker and for motion it leaves out, not only for each
    frame's look.
  """
  common.set_size(c, "mu")
  c.model.update(width=128, depth=4, num_heads=4, patch=(2, 8, 8), dtype="float32",
                 head="overlap", head_margin=2)
  c.text.update(vocab_size=1024, max_len=16, width=128, depth=2, num_heads=4)
  # Identity through its own cross-attention and as in-context reference tokens: on
  # pixels at step 3000 with 4 Euler steps, identity gap 0.241 [0.208, 0.274] against
  # 0.124 [0.095, 0.154] with the cross-attention alone (README "What the quickstart
  # shows").
  c.identity.update(mode="separate+reference", face_size=32, face_patch=8, width=128,
                    depth=2, num_heads=4, num_tokens=8, resampler_depth=1)
  # The error of the frame-to-frame change counts once more (diffusion.motion_weight): at
  # step 3000 action 43.8% against 37.5%, temporal seams 3.91 against 6.51, the identity
  # gap 0.324 against 0.344 (README "What the quickstart shows").
  c.diffusion.update(prediction="x0", t_mean=1.5, t_std=1.0, shift=1.0, shift_base_tokens=0,
                     t_uniform=0.2, motion_weight=1.0)
  c.data.update(data_dir="data/synthetic_faces_bench", frames=8, height=32, width=32,
                batch_size=32, num_identities=500, clips_per_identity=8, test_fraction=0.2)
  c.optim.update(lr=5e-4, warmup_steps=200, final_lr_frac=0.1)
  c.ema.decay = 0.999
  c.train.log_every = 50
  # 4 Euler steps: this recipe trains mostly at high noise, and its x0 predictions below
  # t ~ 0.1 are worse than a linear denoiser's (evaluation 'denoise'), so more steps spend
  # more time where the model is weak: on pixels at step 3000, 4 steps beat 32 on FVD and
  # action and match it on identity (README "What the quickstart shows"), at an eighth of
  # the cost. Text guidance 1 (face 2): on pixels at step 3000, identity gap 0.324 vs
  # 0.298 and FVD 1539 vs 1680 against text 4, the same action accuracy (32.0% vs 32.8%;
  # README).
  c.sample.update(num_steps=4, text_scale=1.0, face_scale=2.0)
  c.total_steps = steps
  c.ckpt.update(every_steps=1000, keep=2)


def pca_latents(c, channels: int = 24, whiten: bool = False) -> None:
  """The DiT on the latents of the fitted linear codec (``video_dit/pca_codec.py``).

  2x4x4 pixel tubelets -> ``channels`` principal components (24: 4x compression,
  32.2 dB held-out PSNR on the 8x32x32 synthetic clips), scaled by one global factor
  (``whiten=true``: each component to unit variance, which the README measured to give
  saturated noise at the quickstart's budget). The DiT's 1x2x2 latent patches cover
  2x8x8 pixels, so the token count is that of pixel 2x8x8, and a token holds 96 values,
  fewer than the width of 128.
  """
  c.latent = dict(source="encode", codec="pca", tubelet=(2, 4, 4), channels=channels,
                  whiten=whiten, fit_clips=2048)
  c.model.update(patch=(1, 2, 2), channels=channels, head="linear")  # the presets: overlap

