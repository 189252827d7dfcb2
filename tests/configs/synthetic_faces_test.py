import jax
import pytest

from configs import common, synthetic_faces
from tests import helpers
from video_dit.diffusion import Diffusion, SamplerConfig
from video_dit.models import registry


def test_parse_arg_types_bools_and_unknown_keys():
  arg = common.parse_arg("variant=B,frames=32,runlocal", variant="S", frames=16,
                         runlocal=False, scale=1.0)
  assert (arg.variant, arg.frames, arg.runlocal, arg.scale) == ("B", 32, True, 1.0)
  with pytest.raises(ValueError, match="unknown config arg 'frame'"):
    common.parse_arg("frame=3", frames=16)
  with pytest.raises(ValueError, match="frames=x is not a int"):
    common.parse_arg("frames=x", frames=16)
  with pytest.raises(ValueError, match="patch='2x4' must look like"):
    common.parse_patch("2x4")


def test_variants_and_runlocal():
  config = synthetic_faces.get_config("variant=B,frames=32,res=128,patch=2x8x8")
  assert (config.model.width, config.model.depth, config.model.num_heads) == (768, 12, 12)
  assert config.model.patch == (2, 8, 8) and config.data.frames == 32
  local = synthetic_faces.get_config("runlocal")
  assert local.model.variant == "mu" and local.data.frames == 8
  for field in ("seed", "total_steps"):
    assert field in local
  assert {"every_steps", "keep"} <= set(local.ckpt) and "data_dir" in local.data
  assert set(local.mesh) == {"data", "fsdp", "tensor"}
  with pytest.raises(ValueError, match="model variant 'Q' is unknown"):
    synthetic_faces.get_config("variant=Q")
  with pytest.raises(AttributeError):  # locked: typos in field names fail
    local.model.widht = 3


@pytest.mark.parametrize("overrides,msg", [
    ({"data.frames": 9}, "frames=9 is not divisible by the tubelet size 2"),
    ({"data.height": 36}, "height=36 is not divisible"),
    ({"model.width": 62}, "model: width=62 is not divisible by num_heads=4"),
    ({"model.rope_split": (4, 4, 4)}, "rope split \\(4, 4, 4\\) does not fit head_dim=16"),
    ({"model.rope_split": (3, 7, 6)}, "does not fit head_dim=16"),
    ({"model.attention": "splash"}, "model.attention='splash' is not one of"),
    ({"model.attention": "cudnn"}, "needs model.dtype='bfloat16'"),
    ({"model.rope": False}, "no position information"),
    ({"identity.gate": "tanh"}, "identity.gate='tanh' is not one of"),
    ({"identity.face_size": 30}, "identity.face_size=30 is not divisible"),
    ({"identity.face_size": 0}, "the identity encoder has no input"),
    ({"identity.every": 0}, "identity.every=0 must be >= 1"),
    ({"text.width": 33}, "text: width=33 is not divisible by num_heads=2"),
])
def test_bad_configs_raise_before_compiling(overrides, msg):
  config = helpers.runlocal_config(**overrides)
  with pytest.raises(ValueError, match=msg):
    registry.build(config)


def test_diffusion_and_sampler_come_from_the_config():
  config = synthetic_faces.get_config("runlocal")
  diffusion = Diffusion.from_config(config.diffusion, num_tokens=1024)
  assert diffusion.config.objective == "flow"
  assert diffusion.shift == 2.0  # sqrt(1024 / shift_base_tokens=256)
  sampler = SamplerConfig.from_config(config.sample)
  assert sampler.interval is None and sampler.num_steps == 8
  sampler.check(diffusion.config.objective)
  config.diffusion.prediction = "eps"
  with pytest.raises(ValueError, match="does not fit objective 'flow'"):
    Diffusion.from_config(config.diffusion, 64)


def test_identity_bench_and_quickstart_presets():
  bench = synthetic_faces.get_config("identity_bench")
  quick = synthetic_faces.get_config("quickstart")
  assert bench.total_steps == 6000 and quick.total_steps == 3000
  assert quick.ckpt.every_steps == 250
  for c in (bench, quick):
    # x0 prediction, high-noise times and no token shift: the recipe the README measures.
    assert (c.diffusion.prediction, c.diffusion.t_mean, c.diffusion.shift_base_tokens) == (
        "x0", 1.5, 0)
    # The DiT learns the linear codec's latents (one global scale): 1x2x2 latent patches,
    # each 2x8x8 pixels (README "What the quickstart shows").
    assert (c.latent.codec, c.latent.whiten, tuple(c.latent.tubelet)) == ("pca", False,
                                                                          (2, 4, 4))
    assert registry.pixel_shape(c) == (8, 32, 32, 3) and registry.video_shape(c) == (4, 8, 8, 24)
    assert tuple(c.model.patch) == (1, 2, 2) and registry.pixel_tubelet(c) == (2, 8, 8)
    # identity through its cross-attention and in-context reference tokens (measured
    # against cross-attention alone in the README)
    assert c.identity.mode == "separate+reference" and c.sample.num_steps == 4
    # text scale 1, face scale 2: better identity and FVD than text 4, same action (README)
    assert (c.sample.text_scale, c.sample.face_scale) == (1.0, 2.0)
    # overlapping output windows (4x4 latent cells over each token's 2x2) and a uniform
    # share of times (measured in the README)
    assert (c.model.head, c.model.head_margin, c.diffusion.t_uniform) == ("overlap", 1, 0.2)
    # the frame-to-frame change's error counts once more (measured in the README)
    assert c.diffusion.motion_weight == 1.0
    registry.build(c)
  # codec=pixels: the same recipe on 2x8x8 pixel tubelets, 12x12-pixel windows.
  pixels = synthetic_faces.get_config("quickstart,codec=pixels")
  assert registry.latent_source(pixels) == "pixels"
  assert registry.video_shape(pixels) == (8, 32, 32, 3) and tuple(pixels.model.patch) == (2, 8, 8)
  assert (pixels.model.head, pixels.model.head_margin) == ("overlap", 2)
  # Other configs stay on pixels; codec=pca there keeps the linear head.
  assert registry.video_shape(synthetic_faces.get_config("runlocal")) == (8, 32, 32, 3)
  assert synthetic_faces.get_config("runlocal,codec=pca").model.head == "linear"
  with pytest.raises(ValueError, match="codec=jpeg is unknown; use pixels or pca"):
    synthetic_faces.get_config("quickstart,codec=jpeg")
  assert synthetic_faces.get_config("quickstart,steps=7").total_steps == 7
  with pytest.raises(ValueError, match="choose one of the presets"):
    synthetic_faces.get_config("quickstart,runlocal")


def test_platform_and_task_errors_name_the_fix():
  from video_dit import tasks  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "cpu":
    with pytest.raises(ValueError, match="cuDNN fused attention.*runs on gpu.*use 'einsum'"):
      registry.build(helpers.runlocal_config(**{"model.attention": "cudnn",
                                                "model.dtype": "bfloat16"}))
  config = helpers.runlocal_config()
  with config.unlocked():
    config.task = "gan"
  with pytest.raises(ValueError, match="task='gan' is not one of \\('dit', 'vae', 'guidance_distill', 'shortcut'\\)"):
    tasks.for_config(config)
