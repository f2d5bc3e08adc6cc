"""AnimateDiff-style temporal (motion) modules, diffusers `AnimateDiffTransformer3D` layout.

Frames travel as `[B*F, h, w, C]` through the spatial layers; a motion module regroups them as `[B*h*w, F, C]`,
attends across frames (sinusoidal frame positions added before each attention), and adds the result back. Its
output projection is zero-initialised, so a fresh motion module is the identity.

GroupNorm statistics: diffusers' `AnimateDiffTransformer3D` takes them per video over all its frames
(`norm="video"`, the default); the original AnimateDiff code (`animatediff/models/motion_module.py`, which trained
`mm_sd_v15*.ckpt`) takes them per frame (`norm="frame"`). The parameters are the same; the outputs differ.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from humandiff.models.attention import Attention, FeedForward


@dataclasses.dataclass(frozen=True)
class MotionOptions:
    """Static settings of the motion modules of one UNet level.

    Attributes:
      heads: attention heads.
      depth: transformer layers per motion module.
      max_seq_length: frames covered by the position table.
      norm: GroupNorm statistics per "video" (diffusers) or per "frame" (original AnimateDiff).
    """

    heads: int = 8
    depth: int = 1
    max_seq_length: int = 32
    norm: str = "video"


def frame_positions(length: int, dim: int) -> np.ndarray:
    """Sinusoidal frame-position table `[length, dim]` (sin on even, cos on odd channels)."""
    position = np.arange(length, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * (-math.log(10000.0) / dim))
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(position * div)
    table[:, 1::2] = np.cos(position * div)
    return table


class TemporalBlock(nn.Module):
    """Two frame self-attentions and a GEGLU feed-forward, each pre-LayerNorm with a residual."""

    heads: int
    dim_head: int
    max_seq_length: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        frames, dim = x.shape[1], x.shape[2]
        if frames > self.max_seq_length:
            raise ValueError(f"{frames} frames exceed the motion module's max_seq_length={self.max_seq_length}")
        pos = jnp.asarray(frame_positions(self.max_seq_length, dim)[:frames], self.dtype)[None]
        norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
        for i, name in enumerate(("attn1", "attn2")):
            h = norm(f"norm{i + 1}")(x) + pos
            x = x + Attention(self.heads, self.dim_head, self_attention=False, dtype=self.dtype, name=name)(h)
        return x + FeedForward(dtype=self.dtype, name="ff")(norm("norm3")(x))


NORM_MODES = ("video", "frame")


class TemporalTransformer(nn.Module):
    """One motion module: GroupNorm, `proj_in`, `transformer_blocks_k`, zero-initialised `proj_out`, residual.

    `norm` picks the GroupNorm statistics: per "video" (all frames, diffusers) or per "frame" (original AnimateDiff).
    """

    heads: int
    depth: int = 1
    groups: int = 32
    max_seq_length: int = 32
    num_frames: int = 1
    dtype: Any = jnp.float32
    norm: str = "video"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        f = self.num_frames
        if n % f:
            raise ValueError(f"batch {n} is not a multiple of num_frames={f}")
        if self.norm not in NORM_MODES:
            raise ValueError(f"unknown motion-module norm {self.norm!r}; expected one of {NORM_MODES}")
        b = n // f
        group_norm = nn.GroupNorm(num_groups=self.groups, epsilon=1e-6, dtype=self.dtype, name="norm")
        # Flax GroupNorm reduces over every axis but the first: [b, f, ...] pools frames, [b*f, ...] does not.
        y = group_norm(x.reshape(b, f, h, w, c) if self.norm == "video" else x).reshape(b, f, h, w, c)
        y = y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, f, c)
        y = nn.Dense(c, dtype=self.dtype, name="proj_in")(y)
        for k in range(self.depth):
            y = TemporalBlock(self.heads, c // self.heads, self.max_seq_length, self.dtype,
                              name=f"transformer_blocks_{k}")(y)
        y = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(y)
        y = y.reshape(b, h, w, f, c).transpose(0, 3, 1, 2, 4).reshape(n, h, w, c)
        return x + y.astype(x.dtype)
