"""Shared UNet/VAE layers in Flax Linen, NHWC, with parameter names that follow diffusers' module names.

Torch `Conv2d(padding=1)` pads symmetrically; Flax "SAME" pads asymmetrically for stride 2, so every conv here
takes explicit padding to match the torch oracle exactly.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def conv(features: int, kernel: int = 3, stride: int = 1, *, padding: Any = None, dtype: Dtype = jnp.float32,
         name: str | None = None, zero_init: bool = False) -> nn.Conv:
    """A torch-style `Conv2d` (symmetric padding `kernel // 2` unless given)."""
    pad = kernel // 2 if padding is None else padding
    if isinstance(pad, int):
        pad = ((pad, pad), (pad, pad))
    extra = {"kernel_init": nn.initializers.zeros, "bias_init": nn.initializers.zeros} if zero_init else {}
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype, name=name, **extra)


def group_norm(groups: int, eps: float, name: str, dtype: Dtype = jnp.float32) -> nn.GroupNorm:
    """GroupNorm with diffusers' group count and epsilon (statistics are computed in float32)."""
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name)


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal timestep features as diffusers' `get_timestep_embedding` computes them.

    Args:
      timesteps: `[N]` (float or int) timesteps.
      dim: feature size (even).
      flip_sin_to_cos: put the cosines first.
      freq_shift: diffusers' `downscale_freq_shift`.
      max_period: largest period of the sinusoids.

    Returns:
      `[N, dim]` float32 features.
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """`linear_1 -> SiLU -> linear_2` on the sinusoidal features (diffusers `TimestepEmbedding`)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x)
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(x))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, optional time-embedding bias, 1x1 shortcut when channels change.

    Attributes:
      out_channels: output channels.
      groups: GroupNorm groups.
      eps: GroupNorm epsilon.
      use_time_emb: whether a `time_emb_proj` exists (UNet yes, VAE no).
      output_scale_factor: divides the residual sum (diffusers' `output_scale_factor`).
      dtype: compute dtype.
    """

    out_channels: int
    groups: int = 32
    eps: float = 1e-5
    use_time_emb: bool = True
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = nn.silu(group_norm(self.groups, self.eps, "norm1", self.dtype)(x))
        h = conv(self.out_channels, dtype=self.dtype, name="conv1")(h)
        if self.use_time_emb:
            if temb is None:
                raise ValueError("ResnetBlock2D with a time embedding was called without temb")
            t = nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, "norm2", self.dtype)(h))
        h = conv(self.out_channels, dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, dtype=self.dtype, name="conv_shortcut")(x)
        out = x.astype(h.dtype) + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv named `conv`; `padding=0` reproduces the VAE's asymmetric (0, 1) pad."""

    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((1, 1), (1, 1)) if self.padding == 1 else ((0, 1), (0, 1))
        return conv(self.out_channels, 3, 2, padding=pad, dtype=self.dtype, name="conv")(x)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour resize with torch's `F.interpolate(mode="nearest")` index rule (floor(i * in / out))."""
    n, h, w, c = x.shape
    oh, ow = size
    if (oh, ow) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = jnp.floor(jnp.arange(oh) * (h / oh)).astype(jnp.int32)
    cols = jnp.floor(jnp.arange(ow) * (w / ow)).astype(jnp.int32)
    return x[:, rows][:, :, cols]


class Upsample2D(nn.Module):
    """Nearest x2 (or to `size`) then a 3x3 conv named `conv`."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        x = resize_nearest(x, size or (2 * x.shape[1], 2 * x.shape[2]))
        return conv(self.out_channels, dtype=self.dtype, name="conv")(x)
