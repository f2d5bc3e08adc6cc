"""Building blocks shared by the metric networks, with torch-shaped names so weights map by a fixed rule.

Parameter paths mirror the torch module paths: torch `a.b.conv.weight` lives at Flax `a/b/conv/kernel`. Batch
norms are frozen (inference only) and keep their statistics in `params` as `scale`, `bias`, `mean`, `var`.
Inputs are channels-last: `[N, H, W, C]` images and `[N, T, H, W, C]` videos.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class FrozenBatchNorm(nn.Module):
    """Inference-mode batch norm over the last axis: `(x - mean) / sqrt(var + eps) * scale + bias`."""

    features: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        inv = scale * jax.lax.rsqrt(var + self.eps)
        return x * inv + (bias - mean * inv)


def conv(
    features: int,
    kernel: Sequence[int],
    *,
    strides: Sequence[int] | int = 1,
    padding: Sequence[int] | int = 0,
    bias: bool = False,
    name: str,
) -> nn.Conv:
    """An `nn.Conv` with torch-style symmetric integer padding (2D or 3D, from `len(kernel)`)."""
    nd = len(kernel)
    strides = (strides,) * nd if isinstance(strides, int) else tuple(strides)
    padding = (padding,) * nd if isinstance(padding, int) else tuple(padding)
    return nn.Conv(
        features,
        tuple(kernel),
        strides=strides,
        padding=[(p, p) for p in padding],
        use_bias=bias,
        precision=jax.lax.Precision.HIGHEST,
        name=name,
    )


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int], padding: Sequence[int] | int = 0):
    """torch `MaxPool{2,3}d` (padding with -inf, floor mode) on channels-last input."""
    padding = (padding,) * len(window) if isinstance(padding, int) else tuple(padding)
    return nn.max_pool(x, tuple(window), tuple(strides), [(p, p) for p in padding])


def same_pad_amounts(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding as the I3D port computes it: total `max(k - (s or size % s), 0)`, front half."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: jax.Array, kernel: Sequence[int], strides: Sequence[int], value: float = 0.0) -> jax.Array:
    """Pads the spatial axes of channels-last `x` for TF 'SAME' output sizes (I3D convs pad 0, its pools too)."""
    spatial = x.shape[1:-1]
    pads = [(0, 0)] + [same_pad_amounts(n, k, s) for n, k, s in zip(spatial, kernel, strides)] + [(0, 0)]
    return jnp.pad(x, pads, constant_values=value)
