"""3D ResNet-50 (Kinetics-400, shortcut type B) as a Flax Linen module, for FID-VID.

Architecture and names follow 3D-ResNets-PyTorch's `resnet-50-kinetics.pth` as loaded by DisCo's "FVD-3DRN50"
(`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0` / `.1`, ...; BN eps 1e-5). The features are the 2048-d
global average after `layer4` (DisCo builds the net with `last_fc=False`; at 16 x 112 x 112 its fixed avg-pool
window covers the whole 1 x 4 x 4 map, so the global mean is the same).

Input: `[N, T, H, W, 3]` frames in 0-255 minus the Kinetics mean (114.7748, 107.7354, 99.4750), see `KINETICS_MEAN`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.metrics.layers import FrozenBatchNorm, conv, max_pool

KINETICS_MEAN = (114.7748, 107.7354, 99.4750)
_LAYERS = (3, 4, 6, 3)


class Downsample(nn.Module):
    """torch `nn.Sequential(Conv3d 1x1x1 stride s, BatchNorm3d)`: children `0` and `1`."""

    features: int
    strides: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(self.features, (1, 1, 1), strides=self.strides, name="0")(x)
        return FrozenBatchNorm(self.features, name="1")(x)


class Bottleneck(nn.Module):
    planes: int
    strides: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.planes
        out = nn.relu(FrozenBatchNorm(p, name="bn1")(conv(p, (1, 1, 1), name="conv1")(x)))
        out = conv(p, (3, 3, 3), strides=self.strides, padding=1, name="conv2")(out)
        out = nn.relu(FrozenBatchNorm(p, name="bn2")(out))
        out = FrozenBatchNorm(4 * p, name="bn3")(conv(4 * p, (1, 1, 1), name="conv3")(out))
        residual = Downsample(4 * p, self.strides, name="downsample")(x) if self.downsample else x
        return nn.relu(out + residual)


class ResNet3D50(nn.Module):
    """`[N, T, H, W, 3]` mean-subtracted 0-255 frames -> `[N, 2048]` features."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(64, (7, 7, 7), strides=(1, 2, 2), padding=3, name="conv1")(x)
        x = nn.relu(FrozenBatchNorm(64, name="bn1")(x))
        x = max_pool(x, (3, 3, 3), (2, 2, 2), 1)
        inplanes = 64
        for stage, blocks in enumerate(_LAYERS):
            planes = 64 * 2**stage
            layer = _Layer(planes, blocks, 1 if stage == 0 else 2, inplanes != 4 * planes or stage > 0,
                           name=f"layer{stage + 1}")
            x = layer(x)
            inplanes = 4 * planes
        return jnp.mean(x, axis=(1, 2, 3))


class _Layer(nn.Module):
    planes: int
    blocks: int
    strides: int
    downsample: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Bottleneck(self.planes, self.strides, self.downsample, name="0")(x)
        for i in range(1, self.blocks):
            x = Bottleneck(self.planes, name=str(i))(x)
        return x
