"""The one place that reads and writes images, videos and keypoint files (Pillow and PyAV; no system ffmpeg needed).

Readers return uint8 RGB arrays (`[H, W, 3]`; videos `[T, H, W, 3]`) and float32 keypoints `[T, 133, 3]`. Grey,
palette, 16-bit and alpha inputs become RGB explicitly (alpha dropped), counted in a `Conversions` when one is
passed. Every bad input raises one `BadInputError` (a `ValueError`; `MissingInputError`, also a
`FileNotFoundError`, for a file that is not there) that names the file and the problem, so a dataset build can
skip and count it and a CLI can print it. Writers: H.264 mp4, gif, image files and bytes, keypoint files.

Also here, for the sampler CLI: sizes (`parse_size`), float <-> uint8 conversions and the side-by-side grid.
Keypoint layout and rendering are in `humandiff.data.keypoints` / `humandiff.data.pose_render`; this module
imports no other humandiff module.
"""

from __future__ import annotations

import collections
import io
import json
import os
import threading
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
KEYPOINT_EXTS = (".npy", ".json")
NUM_KEYPOINTS = 133  # COCO-WholeBody points per frame (layout: humandiff.data.keypoints)

# Errors the decoders raise for unreadable input. PIL raises SyntaxError for some broken PNG chunks; PyAV's
# av.FFmpegError (an OSError in recent versions) is added where videos are read.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


class BadInputError(ValueError):
    """Input that cannot become correct data. The message is `"<path>: <reason>"`."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


class MissingInputError(BadInputError, FileNotFoundError):
    """A `BadInputError` for a file that does not exist (also a `FileNotFoundError`)."""


class Conversions(collections.Counter):
    """Counts explicit colour conversions, e.g. {"RGBA->RGB": 3, "L->RGB": 10}; safe across threads."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self[key] += 1


def _av():
    """PyAV, imported where videos are read or written (the import takes about 0.3 s)."""
    import av  # noqa: PLC0415

    return av


# Images.


def to_rgb(image: Image.Image, conversions: Conversions | None = None) -> Image.Image:
    """Returns `image` as 8-bit RGB; every non-RGB mode is converted explicitly and counted.

    Args:
        image: a PIL image in any mode.
        conversions: counter updated with "<mode>->RGB" for each conversion (None: not counted).

    Returns:
        An RGB PIL image (alpha, if any, is dropped; 16-bit grey is rescaled to 8 bits, not clipped).
    """
    if image.mode == "RGB":
        return image
    mode = image.mode
    if conversions is not None:
        conversions.add(f"{mode}->RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: rescale to 8 bits before RGB.
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        image = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def read_image(path: str, conversions: Conversions | None = None) -> np.ndarray:
    """Decodes an image file fully (so truncation is detected) into uint8 RGB `[H, W, 3]`.

    Raises:
        MissingInputError: the file does not exist.
        BadInputError: the file is not a readable image (corrupt or truncated).
    """
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(to_rgb(im, conversions), dtype=np.uint8)
    except FileNotFoundError as e:
        raise MissingInputError(path, "file not found") from e
    except _DECODE_ERRORS as e:
        raise BadInputError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e


def load_image(path: str, size: tuple[int, int] | None, what: str = "reference image") -> np.ndarray:
    """`read_image` in the sampler CLI's words: uint8 `[H, W, 3]`, resized (bicubic) to `size` = (height, width).

    Raises:
        FileNotFoundError: "<what> not found: <path>".
        ValueError: "cannot read <what> <path>: <reason>".
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        image = read_image(path)
    except BadInputError as e:
        raise ValueError(f"cannot read {what} {path}: {e.reason}") from e
    if size is not None and image.shape[:2] != tuple(size):
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))
    return image


def list_frames(folder: str) -> list[str]:
    """Names of the image files (`IMAGE_EXTS`) directly in `folder`, sorted."""
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))


def write_image(path: str, image: np.ndarray, *, quality: int = 95) -> None:
    """Writes uint8 `[H, W, 3]` (or `[H, W]`, e.g. a mask) in the format of the file's extension (PNG, JPEG, ...).

    Args:
        path: output file.
        image: the pixels.
        quality: JPEG quality (other formats ignore it).
    """
    Image.fromarray(np.asarray(image)).save(path, quality=quality)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """Encodes uint8 RGB `[H, W, 3]` as JPEG bytes (4:2:0 chroma, like most video)."""
    buf = io.BytesIO()
    Image.fromarray(frame, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    """Encodes uint8 `[H, W]` (mask) or `[H, W, 3]` as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_frames(folder: str, frames: np.ndarray) -> list[str]:
    """`frame_0000.png`, ... in `folder`; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        paths.append(os.path.join(folder, f"frame_{i:04d}.png"))
        write_image(paths[-1], f)
    return paths


def write_gif(path: str, frames: np.ndarray, fps: float) -> None:
    """Looping gif with Pillow."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)


# Videos.


def is_grey_or_alpha_format(pix_fmt: str) -> bool:
    """True for FFmpeg pixel formats that are grey, palette or carry alpha (gray*, ya*, pal8, rgba,
    yuva420p, gbrap, ...): their conversion to RGB is counted. Plain YUV/RGB formats are not."""
    if pix_fmt.startswith(("gray", "ya", "pal")):
        return True
    return "a" in pix_fmt.replace("yuv", "").replace("nv", "")


def iter_video_frames(path: str, conversions: Conversions | None = None) -> Iterator[np.ndarray]:
    """Yields the frames of a video file as uint8 RGB `[H, W, 3]`, one at a time (memory stays small).

    Args:
        path: video file (mp4, gif, webm, ...).
        conversions: counter of grey/palette/alpha pixel formats converted to RGB (None: not counted).

    Raises:
        MissingInputError: the file does not exist.
        BadInputError: the file cannot be opened, has no video stream, fails to decode, or decodes fewer frames
            than its container declares (truncated file; checked when the frames are read to the end).
    """
    av = _av()
    errors = _DECODE_ERRORS + (av.FFmpegError,)
    if not os.path.exists(path):
        raise MissingInputError(path, "file not found")
    try:
        container = av.open(path)
    except errors as e:
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
                if conversions is not None and is_grey_or_alpha_format(fmt):
                    conversions.add(f"{fmt}->RGB")
                count += 1
                yield frame.to_ndarray(format="rgb24")
        except errors as e:
            raise BadInputError(path, f"corrupt video: decoding failed after {count} frames ({e})") from e
        if count == 0:
            raise BadInputError(path, "no decodable frames (corrupt or truncated video)")
        if declared and count < declared:
            raise BadInputError(path, f"truncated video: decoded {count} of {declared} declared frames")


def video_fps(path: str) -> float:
    """Frame rate of a video file (0.0 when the container does not say)."""
    av = _av()
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return float(rate) if rate else 0.0
    except (_DECODE_ERRORS + (av.FFmpegError, IndexError)) as e:
        raise BadInputError(path, f"cannot read frame rate ({e})") from e


def read_video(path: str, *, max_frames: int | None = None,
               conversions: Conversions | None = None) -> tuple[np.ndarray, float]:
    """All frames (or the first `max_frames`) of a video file or of a folder of frame images (`list_frames`).

    Args:
        path: video file, or folder of frame images (sorted by name).
        max_frames: stop after this many frames (the truncation check then does not run).
        conversions: counter of colour conversions (see `to_rgb`, `iter_video_frames`).

    Returns:
        `(frames, fps)`: uint8 `[T, H, W, 3]` and the frame rate (0.0 for a folder or when the file does not say).

    Raises:
        MissingInputError / BadInputError: see `iter_video_frames` and `read_image`; also a folder without frame
            images and frames whose sizes differ.
    """
    if os.path.isdir(path):
        names = list_frames(path)
        if not names:
            raise BadInputError(path, f"no frame images ({', '.join(IMAGE_EXTS)}) in the folder")
        files = [os.path.join(path, n) for n in names]
        source = (read_image(f, conversions) for f in files)
    else:
        files = None
        source = iter_video_frames(path, conversions)
    frames: list[np.ndarray] = []
    try:
        for frame in source:
            if frames and frame.shape != frames[0].shape:
                where = files[len(frames)] if files else f"{path} frame {len(frames)}"
                raise BadInputError(where, f"frame size {frame.shape[:2]} differs from the first frame's "
                                           f"{frames[0].shape[:2]}")
            frames.append(frame)
            if max_frames and len(frames) >= max_frames:
                break
    finally:
        source.close()
    return np.stack(frames), (0.0 if files else video_fps(path))


def write_mp4(path: str, frames: np.ndarray, fps: float = 8.0, *, crf: int = 18, preset: str | None = None) -> None:
    """Writes uint8 RGB `[T, H, W, 3]` frames as an H.264 (yuv420p) mp4 with PyAV's bundled FFmpeg.

    Args:
        path: output file.
        frames: the frames; height and width must be even (yuv420p halves both for the chroma planes).
        fps: frame rate (a fractional rate is kept as a fraction, e.g. 7.5 -> 15/2).
        crf: x264 constant rate factor (18: visually lossless).
        preset: x264 speed preset, e.g. "ultrafast" for fixtures (None: x264's default, "medium").

    Raises:
        ValueError: frames that are not uint8 `[T, H, W, 3]`, or an odd height or width.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 {path}: expected uint8 [T, H, W, 3] frames, got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"write_mp4 {path}: H.264 yuv420p needs even height and width, got {h}x{w}")
    av = _av()
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), **({"preset": preset} if preset else {})}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())


# Keypoints.


def _keypoint_problem(arr: np.ndarray, video: bool) -> str | None:
    """Why `arr` is not a pose array (None if it is one): rank, trailing shape, dtype, non-finite scores."""
    want = "[T, 133, 3]" if video else "[133, 3]"
    if arr.ndim != (3 if video else 2) or arr.shape[-2:] != (NUM_KEYPOINTS, 3):
        return f"expected COCO-WholeBody keypoints of shape {want}, got shape {arr.shape}"
    if not np.issubdtype(arr.dtype, np.number):
        return f"expected a numeric array, got dtype {arr.dtype}"
    if not np.all(np.isfinite(arr[..., 2])):
        return f"keypoint scores contain NaN or inf ({_first_nonfinite(arr[..., 2:])})"
    return None


def _first_nonfinite(values: np.ndarray) -> str:
    """Where the first NaN/inf of `[(T,) 133, C]` values is: "frame 3, keypoint 7" (frames and points from 0)."""
    index = np.argwhere(~np.isfinite(values).all(-1))[0]
    return ", ".join(f"{name} {i}" for name, i in zip(("frame", "keypoint")[-len(index):], index))


def validate_keypoints(keypoints: np.ndarray, *, video: bool, source: str = "keypoints") -> np.ndarray:
    """Checks the shape of a pose array and returns it as float32.

    Args:
      keypoints: `[133, 3]` (`video=False`) or `[T, 133, 3]` (`video=True`): x, y in pixels and a score.
      video: whether a sequence of frames is expected.
      source: what to name in the error (a file path, an argument name).

    Returns:
      The array as float32 (a copy only if the dtype differs).

    Raises:
      ValueError: wrong rank, wrong trailing shape, or non-finite scores (NaN coordinates are allowed: they mark
        points the renderer does not draw).
    """
    arr = np.asarray(keypoints)
    problem = _keypoint_problem(arr, video)
    if problem:
        raise ValueError(f"{source}: {problem}")
    return arr.astype(np.float32, copy=False)


def save_keypoints(path: str | os.PathLike, keypoints: np.ndarray) -> None:
    """Writes a video's keypoints `[T, 133, 3]` (or one frame's `[133, 3]`) to `.npy` or `.json`.

    Raises:
      ValueError: wrong shape or an unknown file extension.
    """
    path = os.fspath(path)
    arr = np.asarray(keypoints)
    arr = validate_keypoints(arr, video=arr.ndim == 3, source=f"keypoints for {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        np.save(path, arr, allow_pickle=False)
    elif ext == ".json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(arr.tolist(), f)
    else:
        raise ValueError(f"{path}: keypoint files must end in .npy or .json, got {ext!r}")


def load_keypoints(path: str | os.PathLike, *, num_frames: int | None = None, video: bool = True,
                   allow_single_frame: bool = False, allow_nan_coordinates: bool = False) -> np.ndarray:
    """Reads and checks a pose file written by `save_keypoints` or the DWPose extractor.

    Args:
      path: `.npy` (no pickle) or `.json` (nested lists) file.
      num_frames: if given, the number of frames of the video; the file must have exactly as many poses.
      video: expect `[T, 133, 3]` (True) or a single frame `[133, 3]` (False).
      allow_single_frame: with `video=True`, a `[133, 3]` file is read as one frame `[1, 133, 3]`.
      allow_nan_coordinates: accept NaN/inf x, y (points the renderer leaves out); scores must always be finite.

    Returns:
      float32 `[T, 133, 3]` or `[133, 3]`.

    Raises:
      MissingInputError: the file does not exist.
      BadInputError: unknown extension, unreadable or truncated content, wrong shape, non-finite values, or a
        pose count that differs from `num_frames`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(path, f"pose file missing: {os.path.basename(path)} not found (the DWPose "
                                      "extractor, python -m data_pipelines.pose.extract, writes it)")
    ext = os.path.splitext(path)[1].lower()
    if ext not in KEYPOINT_EXTS:
        raise BadInputError(path, f"keypoint files must end in .npy or .json, got {ext!r}")
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as f:
                arr = np.asarray(json.load(f), dtype=np.float32)
    except _DECODE_ERRORS as e:  # json.JSONDecodeError is a ValueError
        raise BadInputError(path, f"cannot read keypoints: unreadable or truncated pose file "
                                  f"({type(e).__name__}: {e})") from e
    if video and allow_single_frame and arr.ndim == 2:
        arr = arr[None]
    problem = _keypoint_problem(arr, video)
    if not problem and not allow_nan_coordinates and not np.all(np.isfinite(arr)):
        problem = (f"keypoint coordinates contain NaN or inf ({_first_nonfinite(arr[..., :2])}); give a point that "
                   "was not detected a score of 0 instead")
    if problem:
        raise BadInputError(path, problem)
    arr = arr.astype(np.float32, copy=False)
    if video and num_frames is not None and arr.shape[0] != num_frames:
        n = arr.shape[0]
        kind = ("too short", "short pose file") if n < num_frames else ("too long", "frame/pose count mismatch")
        raise BadInputError(path, f"pose file {kind[0]}: {n} frames of keypoints for a video of {num_frames} "
                                  f"frames ({kind[1]}: {n} poses for {num_frames} frames)")
    return arr


# Sampler CLI.


def parse_size(text: str) -> tuple[int, int]:
    """"512" or "768x512" (height x width) -> (height, width); both must be positive multiples of 8."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError as e:
        raise ValueError(f"--size must look like 512 or 768x512 (height x width), got {text!r}") from e
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"--size must look like 512 or 768x512 (height x width), got {text!r}")
    check_size(parts[0], parts[1], "--size")
    return parts[0], parts[1]


def check_size(height: int, width: int, what: str) -> None:
    """Raises if a size is not divisible by 8 (the VAE's downsampling factor)."""
    if height % 8 or width % 8:
        raise ValueError(f"{what} {height}x{width} (height x width) must be divisible by 8; pass e.g. --size "
                         f"{max(8, height // 8 * 8)}x{max(8, width // 8 * 8)}")


def to_model_image(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return image.astype(np.float32) / 127.5 - 1.0


def to_pose_image(pose: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]."""
    return pose.astype(np.float32) / 255.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> uint8."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(reference: np.ndarray, poses: np.ndarray, results: np.ndarray) -> np.ndarray:
    """Per frame `[reference | pose | result]` side by side: uint8 `[T, H, 3W, 3]`."""
    ref = np.broadcast_to(reference[None], results.shape)
    return np.concatenate([ref, poses, results], axis=2)
