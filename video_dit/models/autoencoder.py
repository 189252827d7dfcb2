"""A causal 3D-convolutional video VAE (the DiT's latent space).

    video (B, T, H, W, 3), T = 1 + 4k  --encoder-->  latents (B, 1 + k, H/8, W/8, C)

Causal in time: every temporal convolution pads only the past (with copies of the first
frame), and every norm is per frame, so latent frame j depends on frames <= 4j alone.
The first frame is coded on its own (latent 0 sees frame 0 only: an image is a T = 1
video and takes the same path); later frames in causal groups of 4 (each temporal
downsampling halves T - 1). The decoder mirrors it: each temporal upsampling keeps the
first frame and doubles the rest. Spatial compression is 2^len(ch_mult)-1 (8x by
default), temporal 2^time_down (4x); both configurable (``config.vae``).

Conv kernels carry logical axes (input channels 'embed' -> fsdp, output channels 'mlp'
-> tensor), so the VAE shards over the same mesh rules as the DiT.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from video_dit.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  channels: int = 3                   # video channels
  base: int = 64                      # channels of the first level
  ch_mult: Sequence[int] = (1, 2, 4, 4)  # per level; len - 1 spatial 2x downsamplings
  num_res: int = 1                    # residual blocks per level
  time_down: int = 2                  # temporal 2x downsamplings (on the first levels)
  latent_channels: int = 8
  groups: int = 8                     # GroupNorm groups (per frame)
  dtype: str = "float32"

  @property
  def space_factor(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  @property
  def time_factor(self) -> int:
    return 2 ** self.time_down

  def latent_shape(self, video_shape) -> tuple[int, int, int, int]:
    """(T, H, W, C) video -> (T', H', W', latent C); raises with the fix when not divisible."""
    t, h, w = video_shape[:3]
    s, f = self.space_factor, self.time_factor
    if (t - 1) % f or h % s or w % s:
      raise ValueError(
          f"video of {t}x{h}x{w} does not fit the VAE's compression ({f}x time, {s}x space): "
          f"frames must be 1 + a multiple of {f} (e.g. {1 + f * max(1, (t - 1) // f)}) and "
          f"height/width multiples of {s}")
    return (1 + (t - 1) // f, h // s, w // s, self.latent_channels)


def _kernel_init():
  return layers.logical(nn.initializers.lecun_normal(), None, None, None, "embed", "mlp")


class CausalConv3d(nn.Module):
  """3D conv that pads time only in the past (replicating frame 0): output frame i sees
  input frames <= i * stride; spatial 'same' padding."""
  features: int
  kernel: tuple[int, int, int] = (3, 3, 3)
  stride: tuple[int, int, int] = (1, 1, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bthwc):
    kt, kh, kw = self.kernel
    if kt > 1:
      first = jnp.repeat(x_bthwc[:, :1], kt - 1, axis=1)
      x_bthwc = jnp.concatenate([first, x_bthwc], axis=1)
    same = lambda k: ((k - 1) // 2, (k - 1) // 2)  # odd k: H -> H / stride for even H
    return nn.Conv(self.features, self.kernel, self.stride, padding=((0, 0), same(kh), same(kw)),
                   dtype=self.dtype, kernel_init=_kernel_init(),
                   bias_init=layers.logical(nn.initializers.zeros_init(), "mlp"))(x_bthwc)


class FrameNorm(nn.Module):
  """GroupNorm over (H, W, channel group) of each frame separately (keeps causality)."""
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_bthwc):
    b, t = x_bthwc.shape[:2]
    c = x_bthwc.shape[-1]
    y = nn.GroupNorm(num_groups=min(self.groups, c), epsilon=1e-6, dtype=self.dtype,
                     scale_init=layers.logical(nn.initializers.ones_init(), "mlp"),
                     bias_init=layers.logical(nn.initializers.zeros_init(), "mlp"))(
                         x_bthwc.reshape((b * t,) + x_bthwc.shape[2:]))
    return y.reshape(x_bthwc.shape[:-1] + (c,))


class ResBlock(nn.Module):
  features: int
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = CausalConv3d(self.features, dtype=self.dtype)(nn.silu(FrameNorm(self.groups, self.dtype)(x)))
    h = CausalConv3d(self.features, dtype=self.dtype)(nn.silu(FrameNorm(self.groups, self.dtype)(h)))
    if x.shape[-1] != self.features:
      x = CausalConv3d(self.features, (1, 1, 1), dtype=self.dtype, name="skip")(x)
    return x + h


class Encoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, x_bthwc):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    h = CausalConv3d(cfg.base * cfg.ch_mult[0], dtype=dt, name="conv_in")(x_bthwc.astype(dt))
    for level, mult in enumerate(cfg.ch_mult):
      for _ in range(cfg.num_res):
        h = ResBlock(cfg.base * mult, cfg.groups, dt)(h)
      if level < len(cfg.ch_mult) - 1:
        st = 2 if level < cfg.time_down else 1
        h = CausalConv3d(h.shape[-1], (3, 3, 3), (st, 2, 2), dtype=dt,
                         name=f"down_{level}")(h)
    h = ResBlock(h.shape[-1], cfg.groups, dt, name="mid")(h)
    h = nn.silu(FrameNorm(cfg.groups, dt, name="norm_out")(h))
    moments = CausalConv3d(2 * cfg.latent_channels, dtype=dt, name="conv_out")(h)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)


def _upsample(x_bthwc, time: bool):
  """Nearest 2x in space; in time (``time``) the first frame stays single and every later
  frame is doubled: T -> 1 + 2 (T - 1)."""
  x = jnp.repeat(jnp.repeat(x_bthwc, 2, axis=2), 2, axis=3)
  if time and x.shape[1] > 1:
    x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], 2, axis=1)], axis=1)
  return x


class Decoder(nn.Module):
  cfg: VAEConfig

  @nn.compact
  def __call__(self, z_bthwc):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    levels = len(cfg.ch_mult)
    h = CausalConv3d(cfg.base * cfg.ch_mult[-1], dtype=dt, name="conv_in")(z_bthwc.astype(dt))
    h = ResBlock(h.shape[-1], cfg.groups, dt, name="mid")(h)
    for level in reversed(range(levels)):
      for _ in range(cfg.num_res):
        h = ResBlock(cfg.base * cfg.ch_mult[level], cfg.groups, dt)(h)
      if level > 0:  # mirrors the encoder's down_{level - 1}
        h = _upsample(h, time=level - 1 < cfg.time_down)
        h = CausalConv3d(h.shape[-1], dtype=dt, name=f"up_{level - 1}")(h)
    h = nn.silu(FrameNorm(cfg.groups, dt, name="norm_out")(h))
    return CausalConv3d(cfg.channels, dtype=dt, name="conv_out")(h).astype(jnp.float32)


class VideoVAE(nn.Module):
  """``__call__(x, noise)`` -> (reconstruction, mean, logvar); ``encode`` / ``decode``."""
  cfg: VAEConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.decoder = Decoder(self.cfg)

  def encode(self, x_bthwc):
    return self.encoder(x_bthwc)

  def decode(self, z_bthwc):
    return self.decoder(z_bthwc)

  def __call__(self, x_bthwc, noise=None):
    mean, logvar = self.encode(x_bthwc)
    z = mean if noise is None else mean + jnp.exp(0.5 * logvar) * noise
    return self.decode(z), mean, logvar


def kl_divergence(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, 1)) per latent element, mean over everything."""
  return 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)


@dataclasses.dataclass(frozen=True)
class VAEObjective:
  """Reconstruction (L1 or L2, mean per pixel) + kl_weight * KL (mean per latent)."""
  model: VideoVAE
  recon: str = "l1"
  kl_weight: float = 1e-4

  def loss(self, params, x0, keys):
    lat = self.model.cfg.latent_shape(x0.shape[1:])
    noise = jax.vmap(lambda k: jax.random.normal(k, lat))(keys)  # per example: any batching
    recon, mean, logvar = self.model.apply(params, x0, noise)
    err = recon - x0
    rec = jnp.mean(jnp.abs(err)) if self.recon == "l1" else jnp.mean(err ** 2)
    kl = kl_divergence(mean, logvar)
    return rec + self.kl_weight * kl, dict(recon=rec, kl=kl, mse=jnp.mean(err ** 2))


def psnr(a, b) -> jax.Array:
  """PSNR in dB of videos in [-1, 1] (peak-to-peak 2), per video."""
  mse = jnp.mean((jnp.clip(a, -1, 1) - jnp.clip(b, -1, 1)) ** 2, axis=tuple(range(1, a.ndim)))
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))
