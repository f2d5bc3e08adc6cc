"""CLIP image preprocessing (shortest-side bicubic resize, center crop, mean/std), in numpy or JAX.

Reproduces transformers' `CLIPImageProcessor` (PIL backend), whose resize is Pillow's `Image.resize(BICUBIC)`:
a separable, antialiased Keys-cubic filter (a = -0.5) applied to the width, then to the height. For uint8
images Pillow works in 8-bit fixed point (22-bit integer weights, round half up, clip to 0..255 after each
pass); this module uses the same integer weights and arithmetic, so uint8 input gives exactly Pillow's pixels.

One function serves both worlds: a numpy array in gives a numpy array out (data-loader workers, no JAX
needed); a JAX array or tracer in gives a JAX array out (jittable, static shapes).
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit images (32 - 8 - 2)
_SUPPORT = 2.0  # support of the cubic kernel, in input pixels at scale 1


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, evaluated as Pillow does (float64, same operation order)."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=32)
def resize_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's bicubic resampling taps for one axis.

    Args:
      in_size: input length.
      out_size: output length.

    Returns:
      `(index [out, K] int32, weight [out, K] float64, fixed [out, K] int64)`: output pixel `o` is
      `sum_k weight[o, k] * x[index[o, k]]`; `fixed` are Pillow's 22-bit integer weights. Taps past an
      output's window have weight 0 (and a valid index).
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = _SUPPORT * filter_scale
    taps = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # truncation, as Pillow's (int) cast
    last = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    offsets = np.arange(taps)
    index = first[:, None] + offsets[None, :]
    inside = offsets[None, :] < (last - first)[:, None]
    weight = np.where(inside, _cubic((index - centers[:, None] + 0.5) / filter_scale), 0.0)
    total = np.cumsum(weight, axis=1)[:, -1:]  # sequential sum, as Pillow accumulates
    weight = np.where(total != 0.0, weight / np.where(total != 0.0, total, 1.0), 0.0)
    fixed = np.where(weight < 0, -0.5 + weight * (1 << _PRECISION_BITS), 0.5 + weight * (1 << _PRECISION_BITS))
    fixed = np.trunc(fixed).astype(np.int64)
    return np.minimum(index, in_size - 1).astype(np.int32), weight, fixed


def _resize_axis(x: Any, axis: int, size: int, quantize: bool, xp: Any) -> Any:
    """Resizes one axis of `x` (values in 0..255); `quantize` reproduces Pillow's 8-bit arithmetic exactly."""
    if x.shape[axis] == size:
        return x
    index, weight, fixed = resize_weights(x.shape[axis], size)
    taps = fixed.astype(np.int32) if quantize else weight.astype(np.float32)
    x = x.astype(xp.int32 if quantize else xp.float32)
    bcast = [1] * x.ndim
    bcast[axis] = size
    # One gather per tap (K <= 2 * ceil(2 * scale) + 1) keeps temporaries at the output size.
    acc = None
    for k in range(index.shape[1]):
        term = xp.take(x, xp.asarray(index[:, k]), axis=axis) * xp.asarray(taps[:, k].reshape(bcast))
        acc = term if acc is None else acc + term
    if quantize:
        # int32 as in Pillow: |sum| stays below 2**31 (weights sum to 1 << 22, overshoot under 30%); the
        # arithmetic shift floors, so with the half added first it rounds half up, like Pillow.
        return xp.clip((acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS, 0, 255).astype(xp.uint8)
    return xp.clip(acc, 0.0, 255.0)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Shape after CLIP's shortest-side resize: the short side becomes `size`, the long one is truncated."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def preprocess(
    images: Any,
    *,
    size: int = 224,
    crop_size: int | None = None,
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
    std: tuple[float, ...] = OPENAI_CLIP_STD,
    float_range: tuple[float, float] = (-1.0, 1.0),
) -> Any:
    """CLIP preprocessing: shortest-side bicubic resize, center crop, mean/std normalisation.

    Steps as `CLIPImageProcessor` (PIL backend): the short side is resized to `size` and the long side to
    `int(size * long / short)` (width pass, then height pass); the crop starts at `(resized - crop) // 2`;
    values are divided by 255, then normalised with `mean`/`std`.

    Differences from `CLIPImageProcessor`:
      * uint8 input: none in the pixels (same integer arithmetic as Pillow); the final normalisation is the
        same float32 formula, so results agree to float32 rounding.
      * float input is resized in float, without 8-bit rounding between and after the passes (transformers
        converts floats to uint8 first, truncating); expect about a third of a level of difference.
      * one size for the whole batch; a crop larger than the resized image raises instead of zero-padding;
        exactly 3 channels (no grayscale/RGBA conversion).

    Args:
      images: `[B, H, W, 3]` or `[H, W, 3]`, uint8 in 0..255 or float in `float_range`; numpy (computed in
        numpy) or JAX (computed in JAX, jittable).
      size: target length of the shortest side (transformers `size["shortest_edge"]`).
      crop_size: center-crop side; defaults to `size`.
      mean: per-channel mean in [0, 1] units.
      std: per-channel standard deviation in [0, 1] units.
      float_range: `(low, high)` that maps to 0..255 for float input; the project's images are in [-1, 1].

    Returns:
      float32 `[B, crop, crop, 3]` (or `[crop, crop, 3]`), CLIP-normalised, NHWC, same array type as the input.
    """
    xp = np if isinstance(images, np.ndarray) else jnp
    crop = size if crop_size is None else crop_size
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"preprocess expects images [B, H, W, 3] or [H, W, 3], got shape {tuple(images.shape)}")
    if crop > size:
        raise ValueError(f"crop_size {crop} is larger than the resized short side {size}")
    h_axis = images.ndim - 3
    quantize = images.dtype == np.uint8
    if quantize:
        x = images
    elif np.issubdtype(images.dtype, np.floating):
        low, high = float_range
        x = (images.astype(xp.float32) - low) * np.float32(255.0 / (high - low))
    else:
        raise ValueError(f"preprocess expects uint8 or float images, got dtype {images.dtype}")
    new_h, new_w = resized_shape(images.shape[h_axis], images.shape[h_axis + 1], size)
    x = _resize_axis(x, h_axis + 1, new_w, quantize, xp)
    x = _resize_axis(x, h_axis, new_h, quantize, xp)
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    x = x[..., top : top + crop, left : left + crop, :]
    x = x.astype(xp.float32) / np.float32(255.0)  # correctly rounded, as transformers' float64 x * (1/255)
    return (x - xp.asarray(mean, xp.float32)) / xp.asarray(std, xp.float32)
