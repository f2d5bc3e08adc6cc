"""Per-image metrics: L1, PSNR (DisCo legacy and fixed), SSIM, grayscale conversion; per-video frame difference.

Every function works on numpy arrays (exact float64 arithmetic, used by `humandiff.evaluate`) and on JAX arrays
(float32, jittable, used by the training evaluator); the namespace follows the input. Inputs are uint8 images
`[..., H, W, C]` (or `[..., H, W]` for grayscale); leading axes are a batch and each image gets its own score.

DisCo protocol (`Wangt-CN/DisCo: tool/metrics/ssim_l1_lpips_psnr.py`), which most pose-animation papers reuse:
* L1: `|a - b|` in 0-255 units divided by `H * W`, averaged over every pixel and channel -> values around 1e-4.
* PSNR (legacy, reported as "PSNR" by DisCo, MagicAnimate, Champ, ...): the images are subtracted and squared as
  **uint8**, so the difference wraps modulo 256 and the square wraps modulo 256 again before the mean; an MSE of 0
  gives 100. The wrapped MSE is at most 255, so legacy PSNR never drops below ~24 dB (typical values 28-31).
* PSNR* (fixed): the same formula in float64 (typical values 16-21 on TikTok).
* SSIM: scikit-image `structural_similarity` on the **grayscale** image (OpenCV BGR->GRAY), 7x7 uniform window,
  sample covariance, K1=0.01, K2=0.03, data range 255.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

Array = Any

# OpenCV's fixed-point RGB->gray coefficients (Q15) for 8-bit images: Y = (9798 R + 19235 G + 3735 B + 2^14) >> 15
# (bit-exact against cv2.cvtColor(COLOR_BGR2GRAY) of opencv 5.0 in tests/metrics/test_image.py).
_GRAY_R, _GRAY_G, _GRAY_B, _GRAY_SHIFT = 9798, 19235, 3735, 15


def _xp(x: Array):
    return np if isinstance(x, np.ndarray) else jnp


def _float(x: Array):
    xp = _xp(x)
    return x.astype(np.float64) if xp is np else x.astype(jnp.float32)


def rgb_to_gray(rgb: Array) -> Array:
    """OpenCV-exact RGB -> gray for uint8 images `[..., H, W, 3]` -> uint8 `[..., H, W]`.

    Equals `cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)` on the same pixels (DisCo reads frames with `cv2.imread`,
    hence BGR there and RGB here).
    """
    xp = _xp(rgb)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_gray needs 3 channels in the last axis, got shape {tuple(rgb.shape)}")
    c = rgb.astype(xp.int32)
    y = (c[..., 0] * _GRAY_R + c[..., 1] * _GRAY_G + c[..., 2] * _GRAY_B + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT
    return y.astype(xp.uint8)


def l1_disco(pred: Array, gt: Array) -> Array:
    """DisCo's L1: mean over pixels and channels of `|pred - gt| / (H * W)`, 0-255 units, per image.

    Args:
      pred: uint8 `[..., H, W, C]`.
      gt: uint8, same shape.

    Returns:
      `[...]` scores (a scalar for one image).
    """
    _check_pair(pred, gt)
    xp = _xp(pred)
    h, w = pred.shape[-3], pred.shape[-2]
    err = xp.abs(_float(pred) - _float(gt)) / float(h * w)
    return err.mean(axis=(-3, -2, -1))


def mse(pred: Array, gt: Array, *, legacy: bool = False, mask: Array | None = None) -> Array:
    """Per-image mean squared error in 0-255 units; `legacy=True` reproduces DisCo's uint8 wrap-around.
    `mask` (`[..., H, W, 1]`, 1 = counted): the mean over the masked pixels only (try-on's generated region)."""
    _check_pair(pred, gt)
    xp = _xp(pred)
    if legacy:
        # uint8 - uint8 and uint8 ** 2 both stay uint8 in numpy: each wraps modulo 256.
        d = (pred.astype(xp.int32) - gt.astype(xp.int32)) % 256
        sq = (d * d) % 256
        return _float(sq).mean(axis=(-3, -2, -1))
    d = _float(pred) - _float(gt)
    if mask is None:
        return (d * d).mean(axis=(-3, -2, -1))
    w = xp.broadcast_to(_float(mask), d.shape)
    return (w * d * d).sum(axis=(-3, -2, -1)) / xp.maximum(w.sum(axis=(-3, -2, -1)), 1.0)


def psnr(pred: Array, gt: Array, *, legacy: bool = False, max_val: float = 255.0,
         mse_floor: float | None = None, mask: Array | None = None) -> Array:
    """Per-image PSNR in dB; MSE 0 gives 100 (as DisCo). `legacy=True` is DisCo's overflowing "PSNR".

    Args:
      pred: uint8 `[..., H, W, C]` (or float images, with `max_val` their peak-to-peak range).
      gt: same shape and range.
      legacy: reproduce the uint8 wrap-around of DisCo's first metric code (see the module docstring).
      max_val: peak signal value (2.0 for images in [-1, 1]).
      mse_floor: if given, the MSE is raised to at least this value instead of MSE 0 giving 100 (the training
        evaluator's convention: 1e-12, so identical images score about 126 dB at `max_val=2`).
      mask: `[..., H, W, 1]`, 1 where pixels count (see `mse`).

    Returns:
      `[...]` PSNR values; average them over images (DisCo averages per-frame PSNR, not MSE).
    """
    xp = _xp(pred)
    m = mse(pred, gt, legacy=legacy, mask=mask)
    if mse_floor is not None:
        return 20.0 * xp.log10(max_val / xp.sqrt(xp.maximum(m, mse_floor)))
    safe = xp.where(m == 0, 1.0, m)
    value = 20.0 * xp.log10(max_val / xp.sqrt(safe))
    return xp.where(m == 0, 100.0, value)


def _window_mean(x: Array, size: int, axes: tuple[int, int]) -> Array:
    """Mean over a `size x size` window with scipy 'reflect' borders (numpy 'symmetric'), same output size."""
    xp = _xp(x)
    pad = [(0, 0)] * x.ndim
    lo, hi = size // 2, (size - 1) // 2
    for a in axes:
        pad[a] = (lo, hi)
    x = xp.pad(x, pad, mode="symmetric")
    for a in axes:
        n = x.shape[a] - size + 1
        acc = 0.0
        for k in range(size):
            acc = acc + x[_slice_along(x.ndim, a, k, k + n)]
        x = acc
    return x / float(size * size)


def _slice_along(ndim: int, axis: int, start: int, stop: int) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop)
    return tuple(index)


def _gaussian_mean(x: Array, sigma: float, axes: tuple[int, int]) -> Array:
    """scipy.ndimage.gaussian_filter(truncate=3.5) along two axes, 'reflect' borders (skimage's gaussian SSIM)."""
    xp = _xp(x)
    radius = int(3.5 * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w = w / w.sum()
    pad = [(0, 0)] * x.ndim
    for a in axes:
        pad[a] = (radius, radius)
    x = xp.pad(x, pad, mode="symmetric")
    for a in axes:
        n = x.shape[a] - 2 * radius
        acc = 0.0
        for k in range(2 * radius + 1):
            acc = acc + float(w[k]) * x[_slice_along(x.ndim, a, k, k + n)]
        x = acc
    return x


def ssim(
    pred: Array,
    gt: Array,
    *,
    channel_axis: int | None = -1,
    win_size: int = 7,
    gaussian: bool = False,
    sigma: float = 1.5,
    data_range: float = 255.0,
) -> Array:
    """scikit-image `structural_similarity` (mean SSIM) per image, numpy or JAX.

    Defaults are scikit-image's (7x7 uniform window, sample covariance). `gaussian=True` is the Wang et al. form
    (11x11-support Gaussian, sigma 1.5, population covariance), as `structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)`.

    Args:
      pred: uint8 images `[..., H, W, C]` (or `[..., H, W]` with `channel_axis=None`).
      gt: same shape.
      channel_axis: -1 for colour images (SSIM averaged over channels), None for grayscale.
      win_size: uniform window size (ignored when `gaussian`).
      gaussian: use the Gaussian window.
      sigma: Gaussian sigma.
      data_range: dynamic range of the pixel values.

    Returns:
      `[...]` SSIM values.
    """
    _check_pair(pred, gt, min_ndim=2)
    xp = _xp(pred)
    x, y = _float(pred), _float(gt)
    axes = (-3, -2) if channel_axis is not None else (-2, -1)
    axes = tuple(a % x.ndim for a in axes)
    if gaussian:
        filt = lambda v: _gaussian_mean(v, sigma, axes)  # noqa: E731
        cov_norm = 1.0
        crop = (2 * int(3.5 * sigma + 0.5) + 1 - 1) // 2
    else:
        filt = lambda v: _window_mean(v, win_size, axes)  # noqa: E731
        npix = win_size * win_size
        cov_norm = npix / (npix - 1.0)
        crop = (win_size - 1) // 2
    if min(x.shape[a] for a in axes) < 2 * crop + 1:
        raise ValueError(f"images of shape {tuple(x.shape)} are smaller than the SSIM window ({2 * crop + 1})")
    ux, uy = filt(x), filt(y)
    # Second moments on mean-shifted copies: mathematically identical, far less float32 cancellation.
    mean_axes = axes + ((x.ndim - 1,) if channel_axis is not None else ())
    xs = x - x.mean(axis=mean_axes, keepdims=True)
    ys = y - y.mean(axis=mean_axes, keepdims=True)
    uxs, uys = filt(xs), filt(ys)
    vx = cov_norm * (filt(xs * xs) - uxs * uxs)
    vy = cov_norm * (filt(ys * ys) - uys * uys)
    vxy = cov_norm * (filt(xs * ys) - uxs * uys)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    index = [slice(None)] * s.ndim
    for a in axes:
        index[a] = slice(crop, s.shape[a] - crop)
    s = s[tuple(index)]
    red = axes + ((s.ndim - 1,) if channel_axis is not None else ())
    return s.mean(axis=red) if xp is np else jnp.mean(s, axis=red)


def ssim_disco(pred: Array, gt: Array) -> Array:
    """DisCo's SSIM: OpenCV grayscale, then scikit-image defaults (7x7 uniform window) on uint8 data."""
    return ssim(rgb_to_gray(pred), rgb_to_gray(gt), channel_axis=None)


def _check_pair(pred: Array, gt: Array, min_ndim: int = 3) -> None:
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"prediction and ground truth differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.ndim < min_ndim:
        raise ValueError(f"expected images with at least {min_ndim} axes, got shape {tuple(pred.shape)}")


def frame_difference(video: Array) -> Array:
    """Per-video mean absolute difference of consecutive frames, `mean |x[f+1] - x[f]|`, in the input's units.

    A static scene rendered consistently scores 0; flicker between frames raises it.

    Args:
      video: `[..., F, H, W, C]` frames (uint8 or float), F >= 2.

    Returns:
      `[...]` one value per video (mean over F - 1 frame pairs, pixels and channels).
    """
    if video.ndim < 4 or video.shape[-4] < 2:
        raise ValueError(f"frame_difference needs [..., F, H, W, C] with F >= 2 frames, got shape {tuple(video.shape)}")
    x = _float(video)
    xp = _xp(video)
    return xp.abs(x[..., 1:, :, :, :] - x[..., :-1, :, :, :]).mean(axis=(-4, -3, -2, -1))
