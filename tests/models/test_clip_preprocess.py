"""CLIP preprocessing against transformers' CLIPImageProcessor (PIL backend) and Pillow's resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from humandiff.models import clip_vision
from humandiff.models.clip_preprocess import _resize_axis, resized_shape
from humandiff.models.clip_vision import preprocess

transformers = pytest.importorskip("transformers")

STD_LEVELS = 255.0 * np.asarray(clip_vision.OPENAI_CLIP_STD)  # one 8-bit level, in normalised units


def _photo(height, width, seed):
    """A smooth pattern plus strong noise: exercises interpolation, overshoot clipping and 8-bit rounding."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = 127 + 100 * np.sin(xx[..., None] / 7.0 + np.arange(3)) * np.cos(yy[..., None] / 11.0)
    noise = np.random.default_rng(seed).normal(0, 40, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height, width", [(256, 320), (300, 200), (100, 150), (50, 37), (224, 224)])
def test_matches_clip_image_processor(height, width):
    image = _photo(height, width, seed=height)
    processor = transformers.CLIPImageProcessorPil()
    want = processor(images=[image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    # numpy, uint8: Pillow's integer arithmetic reproduced, so the result is bit-identical.
    got = preprocess(image[None])
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (1, 224, 224, 3)
    np.testing.assert_array_equal(got, want)
    # JAX, uint8: same pixels; the normalisation may round differently in the last bit of float32.
    got_jax = jax.jit(preprocess)(jnp.asarray(image[None]))
    assert isinstance(got_jax, jax.Array)
    assert float(np.abs(np.asarray(got_jax) - want).max()) <= 1e-6
    # Float input in the project's [-1, 1] convention skips both 8-bit roundings (each up to half a level, the
    # first one amplified by the kernel's overshoot): within 1.5 levels, about 0.3 levels on average.
    float_image = image[None].astype(np.float32) / 127.5 - 1.0
    levels = np.abs(preprocess(float_image) - want) * STD_LEVELS
    print(f"preprocess float {height}x{width}: max {levels.max():.3g}, mean {levels.mean():.3g} levels vs uint8 path")
    assert levels.max() <= 1.5 and levels.mean() <= 0.4
    got_float_jax = np.asarray(jax.jit(preprocess)(jnp.asarray(float_image)))
    assert float(np.abs(got_float_jax - preprocess(float_image)).max()) <= 1e-5


@pytest.mark.parametrize("src, dst", [((97, 131), (224, 300)), ((640, 480), (298, 224)), ((33, 500), (7, 91))])
def test_resize_is_pillow_bicubic_exactly(src, dst):
    # Up- and down-scaling, extreme aspect ratios: width pass then height pass, in 8-bit fixed point.
    image = _photo(*src, seed=1)
    want = np.asarray(Image.fromarray(image).resize((dst[1], dst[0]), Image.BICUBIC))
    got = _resize_axis(_resize_axis(image, 1, dst[1], True, np), 0, dst[0], True, np)
    np.testing.assert_array_equal(got, want)


def test_shapes_single_image_and_errors():
    images = np.zeros((3, 40, 60, 3), np.uint8)
    out = jax.jit(lambda x: preprocess(x, size=32))(jnp.asarray(images))
    assert out.shape == (3, 32, 32, 3) and out.dtype == jnp.float32
    black = -np.asarray(clip_vision.OPENAI_CLIP_MEAN) / np.asarray(clip_vision.OPENAI_CLIP_STD)
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], black, rtol=1e-6)
    single = preprocess(images[0], size=32, crop_size=30)
    assert single.shape == (30, 30, 3)
    assert resized_shape(40, 60, 32) == (32, 48) and resized_shape(61, 40, 32) == (48, 32)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\] or \[H, W, 3\], got shape \(40, 60\)"):
        preprocess(images[0, ..., 0])
    with pytest.raises(ValueError, match="crop_size 40 is larger"):
        preprocess(images, size=32, crop_size=40)
    with pytest.raises(ValueError, match="uint8 or float"):
        preprocess(images.astype(np.int32))
