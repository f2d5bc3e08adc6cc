"""I3D (Inception-v1 inflated, Kinetics-400) as a Flax Linen module, for FVD.

Architecture and names follow the PyTorch port that ships `i3d_pretrained_400.pt` (used by DisCo's
"FVD-3DInception", VideoGPT and StyleGAN-V): `Conv3d_1a_7x7.conv3d`, `Mixed_3b.b1b.bn`, `logits.conv3d`, ...
Every conv and pool pads like TensorFlow 'SAME' (computed from the input size, zeros, even for max pools), batch
norms use eps 1e-3. DisCo's FVD features are the **logits** (400-d): spatial average pool, 1x1x1 conv, mean over
time. The torch port averages with a fixed 7x7 window, which is the global spatial mean at its 224 px input;
here the mean is always global, so small inputs work too.

Input: `[N, T, H, W, 3]` in [-1, 1] (DisCo: `frame / 127.5 - 1` after a 224 px bicubic resize).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.metrics.layers import FrozenBatchNorm, conv, pad_same

# (in_channels are implied) out channels: b0, b1a, b1b, b2a, b2b, b3b
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class Unit3D(nn.Module):
    """'SAME'-padded 3D conv (+ BN eps 1e-3) (+ ReLU); torch names `conv3d`, `bn`."""

    features: int
    kernel: Sequence[int] = (1, 1, 1)
    strides: Sequence[int] = (1, 1, 1)
    batch_norm: bool = True
    bias: bool = False
    relu: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = pad_same(x, self.kernel, self.strides)
        x = conv(self.features, self.kernel, strides=self.strides, bias=self.bias, name="conv3d")(x)
        if self.batch_norm:
            x = FrozenBatchNorm(self.features, eps=1e-3, name="bn")(x)
        return nn.relu(x) if self.relu else x


def _max_pool_same(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
    return nn.max_pool(pad_same(x, window, strides), tuple(window), tuple(strides))


class InceptionModule(nn.Module):
    channels: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channels
        b0 = Unit3D(c[0], name="b0")(x)
        b1 = Unit3D(c[2], (3, 3, 3), name="b1b")(Unit3D(c[1], name="b1a")(x))
        b2 = Unit3D(c[4], (3, 3, 3), name="b2b")(Unit3D(c[3], name="b2a")(x))
        b3 = Unit3D(c[5], name="b3b")(_max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
    """`[N, T, H, W, 3]` in [-1, 1] -> `[N, num_classes]` logits averaged over time (DisCo's FVD features)."""

    num_classes: int = 400

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = Unit3D(64, name="Conv3d_2b_1x1")(x)
        x = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        for name in ("Mixed_3b", "Mixed_3c"):
            x = InceptionModule(_MIXED[name], name=name)(x)
        x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = InceptionModule(_MIXED[name], name=name)(x)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            x = InceptionModule(_MIXED[name], name=name)(x)
        x = jnp.mean(x, axis=(2, 3), keepdims=True)  # [N, T', 1, 1, 1024]
        x = Unit3D(self.num_classes, batch_norm=False, bias=True, relu=False, name="logits")(x)
        return jnp.mean(x[:, :, 0, 0, :], axis=1)
