"""LPIPS (VGG variant, v0.1 linear heads) as a Flax Linen module.

Parameter names follow torch: torchvision VGG16 `features.{i}` convs and lpips' `lin{k}.model.1` 1x1 heads.
The network expects inputs in [-1, 1] (it shifts/scales them itself). DisCo feeds `ToTensor()` images in
[0, 1] without `normalize=True`, i.e. the [0, 1] image goes in as if it were [-1, 1]; `lpips_distance` exposes
both (`disco_range=True` reproduces the quirk).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.metrics.layers import conv, max_pool

# torchvision vgg16 `features` indices of the convs, grouped by the five LPIPS taps (relu1_2 ... relu5_3).
_VGG_STAGES = (((0, 3, 64), (2, 64, 64)),
               ((5, 64, 128), (7, 128, 128)),
               ((10, 128, 256), (12, 256, 256), (14, 256, 256)),
               ((17, 256, 512), (19, 512, 512), (21, 512, 512)),
               ((24, 512, 512), (26, 512, 512), (28, 512, 512)))
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class _Model(nn.Module):
    """lpips `NetLinLayer.model`: dropout (inactive at eval) then a bias-free 1x1 conv to one channel (`1`)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(1, (1, 1), name="1")(x)


class NetLin(nn.Module):
    """lpips `NetLinLayer` (torch path `lin{k}.model.1`)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _Model(name="model")(x)


class VGG16Features(nn.Module):
    """The five ReLU taps of torchvision's VGG16 `features`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        for i, stage in enumerate(_VGG_STAGES):
            if i:
                x = max_pool(x, (2, 2), (2, 2))
            for idx, _, out in stage:
                x = nn.relu(conv(out, (3, 3), padding=1, bias=True, name=str(idx))(x))
            taps.append(x)
        return taps


class LPIPS(nn.Module):
    """LPIPS-VGG distance per image pair: `[N, H, W, 3]` x2 in [-1, 1] -> `[N]`."""

    @nn.compact
    def __call__(self, x0: jax.Array, x1: jax.Array) -> jax.Array:
        shift, scale = jnp.asarray(_SHIFT), jnp.asarray(_SCALE)
        vgg = VGG16Features(name="features")
        f0 = vgg((x0 - shift) / scale)
        f1 = vgg((x1 - shift) / scale)
        total = 0.0
        for k, (a, b) in enumerate(zip(f0, f1)):
            a = a / (jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True)) + 1e-10)
            b = b / (jnp.sqrt(jnp.sum(b * b, axis=-1, keepdims=True)) + 1e-10)
            d = NetLin(name=f"lin{k}")((a - b) ** 2)
            total = total + jnp.mean(d, axis=(1, 2, 3))
        return total


def lpips_distance(module: LPIPS, params, pred: jax.Array, gt: jax.Array, *, disco_range: bool) -> jax.Array:
    """LPIPS between uint8 images `[N, H, W, 3]`.

    Args:
      module: an `LPIPS` module.
      params: its `{"params": ...}`.
      pred: uint8 predictions.
      gt: uint8 ground truth.
      disco_range: True feeds [0, 1] images (DisCo's call, no `normalize=True`); False feeds [-1, 1] (lpips' own
        convention, the "standard" protocol).

    Returns:
      `[N]` distances.
    """
    a = jnp.asarray(pred, jnp.float32) / 255.0
    b = jnp.asarray(gt, jnp.float32) / 255.0
    if not disco_range:
        a, b = a * 2.0 - 1.0, b * 2.0 - 1.0
    return module.apply(params, a, b)
