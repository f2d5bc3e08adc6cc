"""Inception-v3, FID variant (TF "2015-12-05" graph as ported by pytorch-fid), as a Flax Linen module.

Differences from the classification Inception-v3: the average-pool branches of the A, C and first E blocks do not
count padding (`count_include_pad=False`), and the last E block max-pools its pool branch. The output is the
2048-d global average of `Mixed_7c` ("pool3"). Torch names (`Conv2d_1a_3x3.conv`, `Mixed_5b.branch1x1.bn`, ...)
are kept so pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` maps directly. Batch norms use eps 1e-3.
Any input side >= 75 px works; FID resizes to 299 first (see `preprocess.resize_bicubic`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.metrics.layers import FrozenBatchNorm, conv, max_pool


class BasicConv2d(nn.Module):
    """conv (no bias) -> BN(eps 1e-3) -> ReLU."""

    features: int
    kernel: Sequence[int]
    strides: int = 1
    padding: Sequence[int] | int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(self.features, self.kernel, strides=self.strides, padding=self.padding, name="conv")(x)
        return nn.relu(FrozenBatchNorm(self.features, eps=1e-3, name="bn")(x))


def _avg_pool_excl(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_excl(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool(x, (3, 3), (2, 2))], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_excl(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool(x, (3, 3), (2, 2))], axis=-1)


class InceptionE(nn.Module):
    max_pool_branch: bool  # FID's Mixed_7c (E_2) max-pools; Mixed_7b (E_1) averages without padding

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = max_pool(x, (3, 3), (1, 1), 1) if self.max_pool_branch else _avg_pool_excl(x)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """`[N, H, W, 3]` images in [-1, 1] -> `[N, 2048]` pool3 features."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
        x = max_pool(x, (3, 3), (2, 2))
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = max_pool(x, (3, 3), (2, 2))
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(False, name="Mixed_7b")(x)
        x = InceptionE(True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def normalize_for_inception(images_0_255: jax.Array, *, clean_fid: bool = True) -> jax.Array:
    """Maps 0-255 float images to the network's input range.

    clean-fid's TorchScript graph (DisCo's FID) computes `(x - 128) / 128`; pytorch-fid computes `x / 127.5 - 1`.
    """
    x = jnp.asarray(images_0_255, jnp.float32)
    return (x - 128.0) / 128.0 if clean_fid else x / 127.5 - 1.0
