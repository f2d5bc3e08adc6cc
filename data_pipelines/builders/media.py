"""Reading raw media for the builders: video files, frame images, pose files; JPEG/PNG encoding.

Every reader raises `BadInputError` naming the offending file; callers decide (raise or skip) through
`data_pipelines.builders.common.ErrorPolicy`. Frames come out as uint8 RGB; grey, palette, 16-bit and
alpha frames are converted to RGB explicitly (alpha dropped) and the conversion is counted.
"""

from __future__ import annotations

import collections
import io
import os
import threading
from collections.abc import Iterator

import av
import numpy as np
from PIL import Image

NUM_KEYPOINTS = 133

# Errors that the media libraries raise for unreadable/corrupt input. PIL raises SyntaxError for some
# broken PNG chunks; av raises subclasses of av.FFmpegError (an OSError subclass in recent versions).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, av.FFmpegError)


class BadInputError(ValueError):
    """Raw input that cannot become a correct sample. The message names the file and the problem."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class Conversions(collections.Counter):
    """Counts explicit colour conversions, e.g. {"RGBA->RGB": 3, "L->RGB": 10}; safe across threads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self[key] += 1


def to_rgb(image: Image.Image, conversions: Conversions) -> Image.Image:
    """Returns `image` as 8-bit RGB; every non-RGB mode is converted explicitly and counted.

    Args:
        image: a PIL image in any mode.
        conversions: counter updated with "<mode>->RGB" for each conversion.

    Returns:
        An RGB PIL image (alpha, if any, is dropped).
    """
    if image.mode == "RGB":
        return image
    mode = image.mode
    conversions.add(f"{mode}->RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: rescale to 8 bits before RGB.
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(path: str, conversions: Conversions) -> np.ndarray:
    """Decodes an image file fully (so truncation is detected) into uint8 RGB [H, W, 3]."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im, conversions)
            return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError as e:
        raise BadInputError(path, "file not found") from e
    except _DECODE_ERRORS as e:
        raise BadInputError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e


def shrunk_size(height: int, width: int, max_short_side: int) -> tuple[int, int]:
    """(height, width) with the short side at most `max_short_side` (0: unchanged), aspect kept."""
    short = min(height, width)
    if max_short_side <= 0 or short <= max_short_side:
        return height, width
    s = max_short_side / short
    return max(1, round(height * s)), max(1, round(width * s))


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] resized (antialiased bicubic) to `size` = (height, width); unchanged if equal."""
    if frame.shape[:2] == tuple(size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BICUBIC))


def scale_keypoints(kp: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Keypoints [..., 3] in pixels of a `size` frame -> pixels of the frame resized to `new_size`."""
    if tuple(size) == tuple(new_size):
        return kp
    out = np.array(kp, np.float32, copy=True)
    out[..., 0] = (out[..., 0] + 0.5) * (new_size[1] / size[1]) - 0.5  # pixel centres map to pixel centres
    out[..., 1] = (out[..., 1] + 0.5) * (new_size[0] / size[0]) - 0.5
    return out


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """Encodes uint8 RGB [H, W, 3] as JPEG bytes (4:2:0 chroma, like most video)."""
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    """Encodes uint8 [H, W] (mask) or [H, W, 3] as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def is_grey_or_alpha_format(pix_fmt: str) -> bool:
    """True for FFmpeg pixel formats that are grey, palette or carry alpha (gray*, ya*, pal8, rgba,
    yuva420p, gbrap, ...): their conversion to RGB is counted. Plain YUV/RGB formats are not."""
    if pix_fmt.startswith(("gray", "ya", "pal")):
        return True
    return "a" in pix_fmt.replace("yuv", "").replace("nv", "")


def iter_video_frames(path: str, conversions: Conversions) -> Iterator[np.ndarray]:
    """Yields the frames of a video file as uint8 RGB [H, W, 3], one at a time (memory stays small).

    Raises:
        BadInputError: the file is missing, cannot be opened, has no video stream, fails to decode, or
            decodes fewer frames than its container declares (truncated file).
    """
    if not os.path.exists(path):
        raise BadInputError(path, "file not found")
    try:
        container = av.open(path)
    except _DECODE_ERRORS as e:
        raise BadInputError(path, f"cannot open video ({type(e).__name__}: {e})") from e
    with container:
        if not container.streams.video:
            raise BadInputError(path, "no video stream (corrupt or truncated file?)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame- and slice-threaded decoding inside FFmpeg
        declared = int(stream.frames or 0)
        count = 0
        try:
            for frame in container.decode(stream):
                fmt = frame.format.name
                if is_grey_or_alpha_format(fmt):
                    conversions.add(f"{fmt}->RGB")
                count += 1
                yield frame.to_ndarray(format="rgb24")
        except _DECODE_ERRORS as e:
            raise BadInputError(path, f"corrupt video: decoding failed after {count} frames ({e})") from e
        if count == 0:
            raise BadInputError(path, "no decodable frames (corrupt or truncated video)")
        if declared and count < declared:
            raise BadInputError(path, f"truncated video: decoded {count} of {declared} declared frames")


def video_fps(path: str) -> float:
    """Frame rate of a video file (0.0 when the container does not say)."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return float(rate) if rate else 0.0
    except (_DECODE_ERRORS + (IndexError,)) as e:
        raise BadInputError(path, f"cannot read frame rate ({e})") from e


def load_keypoints(path: str, num_frames: int | None = None) -> np.ndarray:
    """Loads and checks a pose file: float32 [T, 133, 3] (x, y in pixels of the frame, score).

    Args:
        path: `.npy` file written by the DWPose extractor (`np.save`, no pickle).
        num_frames: when given, the number of frames the poses must match exactly.

    Returns:
        float32 [T, 133, 3] (or [133, 3] files are returned as [1, 133, 3]).

    Raises:
        BadInputError: missing, unreadable/truncated, wrong shape, non-finite, or a count that does not
            match `num_frames` ("short pose file" when there are fewer poses than frames).
    """
    if not os.path.exists(path):
        raise BadInputError(path, "pose file missing (run the DWPose extractor to write it)")
    try:
        kp = np.load(path, allow_pickle=False)
    except _DECODE_ERRORS as e:
        raise BadInputError(path, f"unreadable or truncated pose file ({type(e).__name__}: {e})") from e
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3):
        raise BadInputError(path, f"pose array has shape {kp.shape}, expected [T, {NUM_KEYPOINTS}, 3]")
    kp = kp.astype(np.float32)
    if not np.all(np.isfinite(kp)):
        raise BadInputError(path, "pose array contains NaN or inf")
    if num_frames is not None and kp.shape[0] != num_frames:
        kind = "short pose file" if kp.shape[0] < num_frames else "frame/pose count mismatch"
        raise BadInputError(path, f"{kind}: {kp.shape[0]} poses for {num_frames} frames")
    return kp


def check_pixel_keypoints(path: str, kp: np.ndarray, height: int, width: int, threshold: float = 0.3) -> None:
    """Rejects keypoints that look normalised to [0, 1] (the contract is pixels of the frame)."""
    visible = kp[..., 2] > threshold
    if visible.sum() >= 3 and min(height, width) > 8:
        xy = kp[..., :2][visible]
        if float(np.abs(xy).max()) <= 1.5:
            raise BadInputError(path, "keypoints look normalised to [0, 1]; expected pixel coordinates")
