"""UNet down / mid / up blocks (diffusers `CrossAttnDownBlock2D`, `DownBlock2D`, `UNetMidBlock2DCrossAttn`,
`UpBlock2D`, `CrossAttnUpBlock2D`) with diffusers' submodule names (`resnets_j`, `attentions_j`,
`downsamplers_0`, `upsamplers_0`).

Video: frames travel as `[B*F, h, w, C]` through these spatial layers; when a level has motion options, a temporal
(motion) module `motion_modules_j` follows each `(resnet, attention)` pair (in the mid block: each attention),
as in diffusers' `UNetMotionModel`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.models.attention import STREAM_AXIS, Transformer2DModel
from humandiff.models.layers import Downsample2D, ResnetBlock2D, Upsample2D
from humandiff.models.temporal import MotionOptions, TemporalTransformer


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """Settings shared by every block of one UNet (static, hashable).

    Attributes:
      groups: GroupNorm groups.
      eps: ResNet GroupNorm epsilon.
      use_linear_projection: transformer `proj_in`/`proj_out` as Linear.
      resnet_scale: ResNet `output_scale_factor` in down/up blocks.
      scd_mode: SCD mode for every spatial self-attention.
      interaction: "causal" | "full".
      attention_impl: attention implementation for self-attention.
      dtype: compute dtype.
      remat: rematerialise each ResNet and transformer in the backward pass.
      num_frames: frames per video in the batch (used by motion modules).
      attention_config: optional `humandiff.ops.attention_config.AttentionConfig` for self-attention.
    """

    groups: int = 32
    eps: float = 1e-5
    use_linear_projection: bool = False
    resnet_scale: float = 1.0
    scd_mode: str | None = None
    interaction: str = "causal"
    attention_impl: str = "auto"
    dtype: Any = jnp.float32
    remat: bool = False
    num_frames: int = 1
    attention_config: Any = None


def _resnet(opts: BlockOptions, out_channels: int, name: str, scale: float | None = None) -> nn.Module:
    cls = nn.remat(ResnetBlock2D) if opts.remat else ResnetBlock2D
    return cls(out_channels, opts.groups, opts.eps, output_scale_factor=opts.resnet_scale if scale is None else scale,
               dtype=opts.dtype, name=name)


def _transformer(opts: BlockOptions, channels: int, heads: int, depth: int, name: str) -> nn.Module:
    if channels % heads:
        raise ValueError(f"{name}: {channels} channels do not split into {heads} attention heads")
    cls = nn.remat(Transformer2DModel) if opts.remat else Transformer2DModel
    return cls(heads, channels // heads, depth, opts.groups, opts.use_linear_projection, opts.scd_mode,
               opts.interaction, opts.attention_impl, opts.attention_config, dtype=opts.dtype, name=name)


def _motion(opts: BlockOptions, motion: MotionOptions | None, x: jax.Array, name: str) -> jax.Array:
    if motion is None:
        return x
    cls = nn.remat(TemporalTransformer) if opts.remat else TemporalTransformer
    module = cls(motion.heads, motion.depth, opts.groups, motion.max_seq_length, opts.num_frames, dtype=opts.dtype,
                 norm=motion.norm, name=name)
    if opts.scd_mode == "joint":  # [ref ; tgt]: the reference is an image, as in the two-pass form's "write" pass
        half = x.shape[0] // 2
        return jnp.concatenate([x[:half], module(x[half:])])
    if opts.scd_mode == "streams":  # the same, per stream: the reference stream (0) skips its motion modules
        return jnp.where(jax.lax.axis_index(STREAM_AXIS) == 0, x, module(x))
    return module(x)


class DownBlock(nn.Module):
    """`CrossAttnDownBlock2D` (cross_attention=True) or `DownBlock2D`. Returns (h, skip states)."""

    out_channels: int
    num_layers: int
    cross_attention: bool
    add_downsample: bool
    heads: int = 8
    depth: int = 1
    downsample_padding: int = 1
    opts: BlockOptions = BlockOptions()
    motion: MotionOptions | None = None

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array, context: jax.Array | None,
                 ref_keep: jax.Array | None = None) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for j in range(self.num_layers):
            h = _resnet(self.opts, self.out_channels, f"resnets_{j}")(h, temb)
            if self.cross_attention:
                h = _transformer(self.opts, self.out_channels, self.heads, self.depth, f"attentions_{j}")(
                    h, context, ref_keep)
            h = _motion(self.opts, self.motion, h, f"motion_modules_{j}")
            skips.append(h)
        if self.add_downsample:
            h = Downsample2D(self.out_channels, self.downsample_padding, self.opts.dtype, name="downsamplers_0")(h)
            skips.append(h)
        return h, skips


class MidBlock(nn.Module):
    """`UNetMidBlock2DCrossAttn`: resnet, then (attention, resnet) pairs."""

    channels: int
    heads: int = 8
    depth: int = 1
    num_layers: int = 1
    scale: float = 1.0
    opts: BlockOptions = BlockOptions()
    motion: MotionOptions | None = None

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array, context: jax.Array | None,
                 ref_keep: jax.Array | None = None) -> jax.Array:
        h = _resnet(self.opts, self.channels, "resnets_0", self.scale)(h, temb)
        for j in range(self.num_layers):
            h = _transformer(self.opts, self.channels, self.heads, self.depth, f"attentions_{j}")(h, context, ref_keep)
            h = _motion(self.opts, self.motion, h, f"motion_modules_{j}")
            h = _resnet(self.opts, self.channels, f"resnets_{j + 1}", self.scale)(h, temb)
        return h


class UpBlock(nn.Module):
    """`CrossAttnUpBlock2D` (cross_attention=True) or `UpBlock2D`; consumes `num_layers` skip states."""

    out_channels: int
    num_layers: int
    cross_attention: bool
    add_upsample: bool
    heads: int = 8
    depth: int = 1
    opts: BlockOptions = BlockOptions()
    motion: MotionOptions | None = None

    @nn.compact
    def __call__(self, h: jax.Array, skips: list[jax.Array], temb: jax.Array, context: jax.Array | None,
                 ref_keep: jax.Array | None = None, upsample_size: tuple[int, int] | None = None) -> jax.Array:
        if len(skips) != self.num_layers:
            raise ValueError(f"up block expects {self.num_layers} skip states, got {len(skips)}")
        for j in range(self.num_layers):
            skip = skips[-(j + 1)]
            h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
            h = _resnet(self.opts, self.out_channels, f"resnets_{j}")(h, temb)
            if self.cross_attention:
                h = _transformer(self.opts, self.out_channels, self.heads, self.depth, f"attentions_{j}")(
                    h, context, ref_keep)
            h = _motion(self.opts, self.motion, h, f"motion_modules_{j}")
        if self.add_upsample:
            h = Upsample2D(self.out_channels, self.opts.dtype, name="upsamplers_0")(h, upsample_size)
        return h
