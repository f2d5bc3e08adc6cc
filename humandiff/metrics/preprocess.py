"""Host-side preprocessing for the feature networks: clean-fid resizing and 16-frame clips."""

from __future__ import annotations

import numpy as np
from PIL import Image

CLIP_LEN = 16


def resize_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """clean-fid's resize (DisCo's FID, FID-VID and FVD inputs): each channel as a float32 PIL image, bicubic.

    Args:
      image: uint8 `[H, W, C]`.
      size: output side (square).

    Returns:
      float32 `[size, size, C]`, not quantised and not clipped (bicubic overshoot is kept, as in DisCo's
      `tool/metrics/resize.py`).
    """
    if image.shape[0] == size and image.shape[1] == size:
        return image.astype(np.float32)
    out = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize((size, size), Image.BICUBIC))
        for c in range(image.shape[-1])
    ]
    return np.stack(out, axis=-1)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """`resize_bicubic` over `[T, H, W, C]`."""
    return np.stack([resize_bicubic(f, size) for f in frames])


def split_clips(frames: np.ndarray, clip_len: int = CLIP_LEN) -> np.ndarray:
    """Consecutive non-overlapping clips `[n, clip_len, ...]` of a video `[T, ...]`.

    A tail shorter than `clip_len` is dropped, except when the whole video is shorter: then its last frame is
    repeated (as DisCo pads FID-VID segments), so every video gives at least one clip.
    """
    t = frames.shape[0]
    if t < clip_len:
        frames = np.concatenate([frames, np.repeat(frames[-1:], clip_len - t, axis=0)])
        t = clip_len
    n = t // clip_len
    return frames[: n * clip_len].reshape((n, clip_len) + frames.shape[1:])


def pad_to_clips(frames: np.ndarray, clip_len: int = CLIP_LEN) -> np.ndarray:
    """DisCo's FID-VID segmentation: repeat the last frame up to a multiple of `clip_len`, then split."""
    extra = (-frames.shape[0]) % clip_len
    if extra:
        frames = np.concatenate([frames, np.repeat(frames[-1:], extra, axis=0)])
    return frames.reshape((-1, clip_len) + frames.shape[1:])
