"""Pose encoder (AnimateAnyone "PoseGuider" style): rendered skeleton image -> features at latent resolution.

Parameter names follow diffusers' `ControlNetConditioningEmbedding` (`conv_in`, `blocks_i`, `conv_out`), so the
`controlnet_cond_embedding.*` weights of a ControlNet-openpose checkpoint can initialise it
(`humandiff.weights.pose.load_pose_encoder_from_controlnet`). The output conv is zero-initialised: at init the
encoder adds exactly nothing to the UNet.

`coord_channels=True` appends two constant channels, the pixel's row and column in [-1, 1], to the pose image
(CoordConv). A UNet as deep as SD-1.5's infers absolute position from its zero padding; a shallow one (the
2-level, 32-pixel demo) cannot, and without position the target's background tokens cannot find the reference
pixels at the same place. Both the reference and the target pass get the same coordinates.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.models.layers import conv


def coordinate_grid(n: int, height: int, width: int, dtype: Any = jnp.float32) -> jax.Array:
    """`[n, height, width, 2]`: each pixel's (row, column), pixel centres spread linearly over [-1, 1]."""
    rows = jnp.linspace(-1.0, 1.0, height, dtype=jnp.float32)
    cols = jnp.linspace(-1.0, 1.0, width, dtype=jnp.float32)
    grid = jnp.stack(jnp.meshgrid(rows, cols, indexing="ij"), axis=-1)
    return jnp.broadcast_to(grid, (n, height, width, 2)).astype(dtype)


class PoseEncoder(nn.Module):
    """3x3 convs with SiLU; each stage keeps channels then halves the resolution (stride 2).

    Attributes:
      out_channels: feature channels: `block_out_channels[0]` of the UNet (320) for "conv_in" injection, or the
        latent channels (4) for "input" injection.
      block_out_channels: channels per stage; `len - 1` stride-2 stages (4 stages: 8x down, the SD VAE factor).
      coord_channels: append (row, column) coordinate channels to the input (`conv_in` then reads 5 channels).
      dtype: compute dtype.
    """

    out_channels: int = 320
    block_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    coord_channels: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pose: jax.Array) -> jax.Array:
        """Pose images `[N, H, W, 3]` in [0, 1] -> features `[N, H / 2**(stages-1), ..., out_channels]`."""
        chans = self.block_out_channels
        x = pose.astype(self.dtype)
        if self.coord_channels:
            x = jnp.concatenate([x, coordinate_grid(x.shape[0], x.shape[1], x.shape[2], self.dtype)], axis=-1)
        x = nn.silu(conv(chans[0], dtype=self.dtype, name="conv_in")(x))
        for i in range(len(chans) - 1):
            x = nn.silu(conv(chans[i], dtype=self.dtype, name=f"blocks_{2 * i}")(x))
            x = nn.silu(conv(chans[i + 1], 3, 2, dtype=self.dtype, name=f"blocks_{2 * i + 1}")(x))
        return conv(self.out_channels, dtype=self.dtype, name="conv_out", zero_init=True)(x)

    @property
    def downsample_factor(self) -> int:
        """Pixel-to-feature resolution ratio."""
        return 2 ** (len(self.block_out_channels) - 1)
