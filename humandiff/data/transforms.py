"""Per-example operations of the loader: frame sampling, one shared crop/resize/flip, CLIP preprocessing.

Coordinates: keypoint (x, y) are pixel indices of the frame (pixel i's centre is at x = i, as DWPose
writes them). A geometric transform maps a source box onto the output image; the same transform is
applied to every frame of a sample, to its reference and to the keypoints, then the pose is rendered
at output resolution. A horizontal flip also swaps left/right keypoints (COCO-WholeBody), so a flipped
skeleton has the colours DWPose would give the flipped image.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

# CLIP ViT image preprocessing (OpenAI CLIP / transformers CLIPImageProcessor defaults).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _wholebody_flip_permutation() -> np.ndarray:
    """Index map i -> mirror(i) for the 133 COCO-WholeBody keypoints."""
    perm = np.arange(133)

    def swap(a, b):
        perm[a], perm[b] = b, a

    for left, right in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]:  # body
        swap(left, right)
    for k in range(3):  # feet: left big toe/small toe/heel <-> right
        swap(17 + k, 20 + k)
    face = [(i, 16 - i) for i in range(8)]  # jaw line
    face += [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22)]  # eyebrows
    face += [(31, 35), (32, 34)]  # nose base
    face += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    face += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]  # mouth
    for a, b in face:
        swap(23 + a, 23 + b)
    for k in range(21):  # hands
        swap(91 + k, 112 + k)
    return perm


FLIP_PERMUTATION = _wholebody_flip_permutation()


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Source box (x0, y0, width, height in source pixels) -> output (out_h, out_w), then optional flip."""

    x0: float
    y0: float
    box_w: float
    box_h: float
    out_h: int
    out_w: int
    flip: bool


CROP_MODES = ("fill", "fit")


def sample_geometry(rng: np.random.Generator, src_h: int, src_w: int, out_h: int, out_w: int,
                    crop_scale: tuple[float, float] = (1.0, 1.0), flip_prob: float = 0.0,
                    mode: str = "fill") -> Geometry:
    """Random box of the output's aspect ratio, scaled by s ~ U(crop_scale), then resized to the output.

    Args:
        rng: per-example generator.
        src_h, src_w: source frame size.
        out_h, out_w: output size.
        crop_scale: (min, max) side scale of the box relative to the base box.
        flip_prob: probability of a horizontal flip.
        mode: "fill": the base box is the largest one inside the frame (the output is covered, the frame's
            excess is cropped away); "fit": the base box is the smallest one containing the whole frame (the
            whole frame is kept, letterboxed with black; a portrait dancer keeps head and feet in a square).

    Returns:
        The transform to apply to every frame, pose and reference of the sample.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode {mode!r}; expected one of {CROP_MODES}")
    aspect = out_w / out_h
    full_w = min(float(src_w), src_h * aspect) if mode == "fill" else max(float(src_w), src_h * aspect)
    s = float(rng.uniform(crop_scale[0], crop_scale[1])) if crop_scale[1] > crop_scale[0] else float(crop_scale[0])
    box_w, box_h = full_w * s, full_w * s / aspect
    # The box slides over the frame (fill) or the frame slides inside the box (fit: box larger than frame).
    x0 = float(rng.uniform(min(0.0, src_w - box_w), max(0.0, src_w - box_w))) if src_w != box_w else 0.0
    y0 = float(rng.uniform(min(0.0, src_h - box_h), max(0.0, src_h - box_h))) if src_h != box_h else 0.0
    flip = bool(rng.random() < flip_prob) if flip_prob > 0 else False
    return Geometry(x0, y0, box_w, box_h, out_h, out_w, flip)


def transform_keypoints(kp: np.ndarray, g: Geometry) -> np.ndarray:
    """Applies `g` to keypoints [..., 133, 3] (scores kept; left/right swapped when flipped)."""
    out = np.array(kp, np.float32, copy=True)
    sx, sy = g.out_w / g.box_w, g.out_h / g.box_h
    out[..., 0] = (out[..., 0] + 0.5 - g.x0) * sx - 0.5
    out[..., 1] = (out[..., 1] + 0.5 - g.y0) * sy - 0.5
    if g.flip:
        out[..., 0] = g.out_w - 1 - out[..., 0]
        out = out[..., FLIP_PERMUTATION, :]
    return out


def open_frame(frame: bytes | np.ndarray) -> Image.Image:
    """A lazily decoded PIL image from JPEG/PNG bytes, or a PIL view of a uint8 [H, W, C] array."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        return Image.fromarray(frame)
    return Image.open(io.BytesIO(bytes(frame)))


def apply_geometry(image: Image.Image, g: Geometry, *, resample=Image.BILINEAR) -> Image.Image:
    """Crops, resizes and flips one PIL image (JPEG decoding is shrunk by DCT scaling when it can be)."""
    src_w, src_h = image.size
    box = (g.x0, g.y0, g.x0 + g.box_w, g.y0 + g.box_h)
    shrink = g.box_w / g.out_w
    if shrink >= 4.0 and image.format == "JPEG" and resample != Image.NEAREST:
        # Decode at a reduced DCT scale that still leaves >= 2x oversampling for the antialiased resize.
        image.draft("RGB", (math.ceil(2 * src_w / shrink), math.ceil(2 * src_h / shrink)))
        fx, fy = image.size[0] / src_w, image.size[1] / src_h
        box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    if box[0] >= 0 and box[1] >= 0 and box[2] <= image.size[0] and box[3] <= image.size[1]:
        out = image.resize((g.out_w, g.out_h), resample=resample, box=box)
    else:  # the box reaches outside the frame ("fit" mode): resize the overlap, paste it on black
        out = _resize_partial(image, box, g.out_w, g.out_h, resample)
    if g.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def _resize_partial(image: Image.Image, box: tuple, out_w: int, out_h: int, resample) -> Image.Image:
    """Resizes the part of `box` that lies inside `image` to where it falls in an out_w x out_h canvas."""
    sx, sy = out_w / (box[2] - box[0]), out_h / (box[3] - box[1])
    inner = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], image.size[0]), min(box[3], image.size[1]))
    # Output pixel edges of the overlap, rounded; the source box is adjusted to the rounded edges so that
    # the mapping stays exactly the affine one (keypoints transform the same way).
    left, top = round((inner[0] - box[0]) * sx), round((inner[1] - box[1]) * sy)
    right, bottom = round((inner[2] - box[0]) * sx), round((inner[3] - box[1]) * sy)
    canvas = Image.new(image.mode, (out_w, out_h))
    if right > left and bottom > top:
        src = (box[0] + left / sx, box[1] + top / sy, box[0] + right / sx, box[1] + bottom / sy)
        src = (max(src[0], 0.0), max(src[1], 0.0), min(src[2], image.size[0]), min(src[3], image.size[1]))
        canvas.paste(image.resize((right - left, bottom - top), resample=resample, box=src), (left, top))
    return canvas


def to_signed_float(image: Image.Image) -> np.ndarray:
    """uint8 RGB image -> float32 [H, W, 3] in [-1, 1]."""
    return np.asarray(image, np.float32) * (2.0 / 255.0) - 1.0


def clip_preprocess(image: Image.Image, size: int = 224) -> np.ndarray:
    """CLIP preprocessing: shorter side to `size` (bicubic), centre crop, [0, 1], CLIP mean/std.

    Returns:
        float32 [size, size, 3].
    """
    w, h = image.size
    # Long side = int(size * long / short), as OpenAI CLIP / transformers compute it.
    rw, rh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    resized = image.resize((rw, rh), resample=Image.BICUBIC)
    left, top = (rw - size) // 2, (rh - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    return (np.asarray(crop, np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def sample_pair(rng: np.random.Generator, num_frames: int, min_margin: int) -> tuple[int, int]:
    """(reference, target) frame indices, uniform over all pairs with |ref - tgt| >= min_margin.

    Raises:
        ValueError: the video has no such pair (fewer than min_margin + 1 frames).
    """
    if num_frames < min_margin + 1 or num_frames < 1:
        raise ValueError(f"{num_frames} frames cannot give a pair {min_margin} frames apart")
    t = np.arange(num_frames)
    # Number of valid references for each target: those at or below t - m and at or above t + m.
    if min_margin == 0:
        counts = np.full(num_frames, num_frames)
    else:
        counts = np.maximum(t - min_margin + 1, 0) + np.maximum(num_frames - (t + min_margin), 0)
    tgt = int(rng.choice(num_frames, p=counts / counts.sum()))
    if min_margin == 0:
        return int(rng.integers(num_frames)), tgt
    below = max(tgt - min_margin + 1, 0)
    k = int(rng.integers(counts[tgt]))
    ref = k if k < below else tgt + min_margin + (k - below)
    return ref, tgt


def sample_clip(rng: np.random.Generator, num_frames: int, clip_len: int, stride: int) -> tuple[np.ndarray, int]:
    """Clip frame indices (clip_len frames, `stride` apart) and a reference index anywhere in the video.

    Raises:
        ValueError: the video is shorter than the clip span (clip_len - 1) * stride + 1.
    """
    span = (clip_len - 1) * stride + 1
    if num_frames < span:
        raise ValueError(f"{num_frames} frames are fewer than the clip span {span} "
                         f"({clip_len} frames, stride {stride})")
    start = int(rng.integers(num_frames - span + 1))
    return start + stride * np.arange(clip_len), int(rng.integers(num_frames))
