"""Cheap image metrics for periodic evaluation during training: a pure, jittable function over uint8 arrays.

    from humandiff.metrics.evaluator import cheap_metrics, to_uint8
    scores = jax.jit(cheap_metrics)(to_uint8(pred), to_uint8(gt))   # {"l1": ..., "psnr": ..., ...}

The values follow the DisCo protocol (see `humandiff.metrics.image`) and are averaged over the batch; pass
`reduce=False` for per-image values. Float32 arithmetic: SSIM and PSNR agree with scikit-image's float64 values to
~1e-6 (tests/metrics/test_image.py), legacy PSNR and L1 exactly up to float32 rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from humandiff.metrics import image


def to_uint8(x: jax.Array) -> jax.Array:
    """Images in [-1, 1] (the model's range) -> uint8 0-255, rounded as PIL/torchvision save them."""
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("reduce",))
def cheap_metrics(pred: jax.Array, gt: jax.Array, reduce: bool = True) -> dict[str, jax.Array]:
    """L1 (DisCo), legacy PSNR, PSNR*, grayscale SSIM (DisCo) and RGB SSIM of uint8 images `[N, H, W, 3]`.

    Args:
      pred: uint8 predictions.
      gt: uint8 ground truth, same shape.
      reduce: average over the batch (True) or return `[N]` values.

    Returns:
      Dict of float32 arrays: `l1`, `psnr_legacy`, `psnr`, `ssim`, `ssim_rgb`.
    """
    if pred.dtype != jnp.uint8 or gt.dtype != jnp.uint8:
        raise TypeError(f"cheap_metrics expects uint8 images, got {pred.dtype} and {gt.dtype}; use to_uint8")
    out = {
        "l1": image.l1_disco(pred, gt),
        "psnr_legacy": image.psnr(pred, gt, legacy=True),
        "psnr": image.psnr(pred, gt),
        "ssim": image.ssim_disco(pred, gt),
        "ssim_rgb": image.ssim(pred, gt),
    }
    return {k: jnp.mean(v) for k, v in out.items()} if reduce else out


def evaluate_held_out(predict_fn, batches, *, max_batches: int | None = None) -> dict[str, float]:
    """Averages `cheap_metrics` over held-out batches.

    Args:
      predict_fn: `batch -> predicted images in [-1, 1]` (e.g. the jitted sampler with fixed seed).
      batches: iterable of dicts with `tgt_image` in [-1, 1] (`[B, H, W, 3]`, or `[B, F, H, W, 3]` for video).
      max_batches: stop after this many batches.

    Returns:
      Frame-weighted means as Python floats.
    """
    sums: dict[str, float] = {}
    count = 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        gt = jnp.asarray(batch["tgt_image"])
        pred = jnp.asarray(predict_fn(batch))
        gt, pred = gt.reshape((-1,) + gt.shape[-3:]), pred.reshape((-1,) + pred.shape[-3:])
        scores = cheap_metrics(to_uint8(pred), to_uint8(gt), reduce=False)
        for k, v in scores.items():
            sums[k] = sums.get(k, 0.0) + float(jnp.sum(v))
        count += gt.shape[0]
    if count == 0:
        raise ValueError("evaluate_held_out got no batches")
    return {k: v / count for k, v in sums.items()}
