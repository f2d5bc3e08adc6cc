"""Image metrics against scikit-image / OpenCV / DisCo's formulas, in numpy (float64) and JAX (float32, jitted).

Tolerances: numpy paths 1e-10 (same float64 formulas, different summation order); JAX paths 1e-5 absolute
(float32; measured errors are ~1e-6 or below).
"""

from __future__ import annotations

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from humandiff.metrics import evaluator, image


def _random_pair(seed=0, shape=(41, 37, 3)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)


def _real_looking_pair():
    """Smooth gradients with a few shapes; the 'prediction' is shifted, blurred and slightly recoloured."""
    yy, xx = np.mgrid[:48, :56]
    base = np.stack([xx * 4.5, yy * 5.0, (xx + yy) * 2.4 + 20], axis=-1).clip(0, 255).astype(np.uint8)
    gt = base.copy()
    cv2.circle(gt, (20, 24), 9, (230, 40, 60), -1)
    cv2.rectangle(gt, (34, 8), (50, 30), (30, 200, 90), -1)
    pred = base.copy()
    cv2.circle(pred, (22, 25), 9, (220, 50, 60), -1)
    cv2.rectangle(pred, (33, 9), (50, 31), (40, 190, 100), -1)
    pred = cv2.GaussianBlur(pred, (5, 5), 1.0)
    return pred, gt


PAIRS = {"random": _random_pair(), "real_looking": _real_looking_pair()}


def _gray_cv2(rgb):
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2GRAY)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_gray_is_opencv_exact(name):
    pred, gt = PAIRS[name]
    for x in (pred, gt):
        np.testing.assert_array_equal(image.rgb_to_gray(x), _gray_cv2(x))
        np.testing.assert_array_equal(np.asarray(image.rgb_to_gray(jnp.asarray(x))), _gray_cv2(x))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_ssim_matches_skimage(name):
    pred, gt = PAIRS[name]
    cases = [
        (image.ssim_disco, structural_similarity(_gray_cv2(pred), _gray_cv2(gt))),
        (image.ssim, structural_similarity(pred, gt, channel_axis=-1)),
        (lambda a, b: image.ssim(a, b, gaussian=True),
         structural_similarity(pred, gt, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)),
    ]
    for fn, want in cases:
        assert abs(fn(pred, gt) - want) <= 1e-10
        assert abs(float(jax.jit(fn)(jnp.asarray(pred), jnp.asarray(gt))) - want) <= 1e-5


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_psnr_matches_skimage_and_disco_legacy(name):
    pred, gt = PAIRS[name]
    want = peak_signal_noise_ratio(gt, pred, data_range=255)
    assert abs(image.psnr(pred, gt) - want) <= 1e-10
    assert abs(float(image.psnr(jnp.asarray(pred), jnp.asarray(gt))) - want) <= 1e-5
    # DisCo's first metric code: np.mean((a - b) ** 2) on uint8 arrays (both operations wrap modulo 256).
    legacy_mse = np.mean((pred - gt) ** 2)
    want_legacy = 20 * np.log10(255.0 / np.sqrt(legacy_mse))
    assert abs(image.psnr(pred, gt, legacy=True) - want_legacy) <= 1e-10
    assert abs(float(image.psnr(jnp.asarray(pred), jnp.asarray(gt), legacy=True)) - want_legacy) <= 1e-5
    assert image.psnr(pred, gt, legacy=True) > image.psnr(pred, gt)  # the overflow inflates PSNR


def test_legacy_psnr_wraps_and_zero_mse_is_100():
    a = np.full((2, 2, 1), 3, np.uint8)
    b = np.full((2, 2, 1), 5, np.uint8)
    # 3 - 5 wraps to 254; 254**2 = 64516 wraps to 64516 % 256 = 4 -> legacy MSE 4, fixed MSE 4 as well.
    assert image.mse(a, b, legacy=True) == 4.0 and image.mse(a, b) == 4.0
    c = np.full((2, 2, 1), 20, np.uint8)
    # 20 - 4 = 16 -> 256 wraps to 0: legacy MSE 0 -> PSNR 100 although the images differ.
    d = np.full((2, 2, 1), 4, np.uint8)
    assert image.psnr(c, d, legacy=True) == 100.0
    assert abs(image.psnr(c, d) - 20 * np.log10(255 / 16)) <= 1e-12
    assert image.psnr(a, a) == 100.0


def test_l1_hand_computed():
    pred = np.zeros((2, 2, 3), np.uint8)
    gt = np.zeros((2, 2, 3), np.uint8)
    gt[0, 0] = (10, 20, 30)  # one pixel differs; |diff| sums to 60 over 12 values
    # DisCo: |a - b| / (H * W) elementwise, then the mean over all 12 elements: (60 / 4) / 12 = 1.25
    assert image.l1_disco(pred, gt) == pytest.approx(1.25, abs=1e-12)
    assert float(image.l1_disco(jnp.asarray(pred), jnp.asarray(gt))) == pytest.approx(1.25, abs=1e-6)


def test_shape_mismatch_is_an_error():
    a, b = _random_pair(shape=(8, 8, 3))
    with pytest.raises(ValueError, match="differ in shape"):
        image.psnr(a, b[:7])


def test_training_evaluator_is_jittable_and_matches_numpy():
    pred = np.stack([PAIRS["real_looking"][0], PAIRS["real_looking"][0][::-1]])
    gt = np.stack([PAIRS["real_looking"][1], PAIRS["real_looking"][1]])
    got = evaluator.cheap_metrics(jnp.asarray(pred), jnp.asarray(gt))
    assert abs(float(got["ssim"]) - np.mean(image.ssim_disco(pred, gt))) <= 1e-5
    assert abs(float(got["psnr"]) - np.mean(image.psnr(pred, gt))) <= 1e-4
    assert abs(float(got["psnr_legacy"]) - np.mean(image.psnr(pred, gt, legacy=True))) <= 1e-4
    assert abs(float(got["l1"]) - np.mean(image.l1_disco(pred, gt))) <= 1e-9
    x = jnp.asarray(gt, jnp.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(np.asarray(evaluator.to_uint8(x)), gt)
    held = evaluator.evaluate_held_out(lambda b: b["tgt_image"][::-1], [{"tgt_image": x}, {"tgt_image": x}])
    assert set(held) == {"l1", "psnr_legacy", "psnr", "ssim", "ssim_rgb"}
    with pytest.raises(TypeError, match="uint8"):
        evaluator.cheap_metrics(x, x)


def test_frame_difference_known_videos():
    static = np.broadcast_to(np.arange(12, dtype=np.float64).reshape(1, 2, 2, 3), (5, 2, 2, 3))
    flicker = np.zeros((2, 4, 1, 1, 3), np.uint8)  # two videos: 0/255 flicker, then a ramp of +10 per frame
    flicker[0, 1::2] = 255
    flicker[1] = (10 * np.arange(4, dtype=np.uint8))[:, None, None, None]
    np.testing.assert_array_equal(image.frame_difference(static), 0.0)
    np.testing.assert_allclose(image.frame_difference(flicker), [255.0, 10.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.jit(image.frame_difference)(jnp.asarray(flicker))), [255.0, 10.0],
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="F >= 2"):
        image.frame_difference(np.zeros((1, 4, 4, 3)))


def test_psnr_of_signed_float_images_with_an_mse_floor():
    """The training evaluator's form: images in [-1, 1] (peak-to-peak 2), MSE floored at 1e-12 (no 100 dB cap)."""
    a = np.zeros((2, 4, 4, 3))
    np.testing.assert_allclose(image.psnr(a, a + 0.2, max_val=2.0, mse_floor=1e-12), 10 * np.log10(4 / 0.04))
    np.testing.assert_allclose(image.psnr(a, a, max_val=2.0, mse_floor=1e-12), 10 * np.log10(4e12))
    assert float(image.psnr(jnp.asarray(a), jnp.asarray(a + 0.2), max_val=2.0, mse_floor=1e-12)[0]) == pytest.approx(
        20.0, abs=1e-4)
