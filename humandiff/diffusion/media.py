"""Image / pose / video input and output for the sampler CLI (Pillow, PyAV; no system ffmpeg needed).

Inputs become float arrays in the project's conventions (images in [-1, 1], pose images in [0, 1], NHWC);
outputs are uint8 frames written as an H.264 mp4, a gif, PNG frames and a side-by-side grid video.
Every bad input raises one `ValueError` / `FileNotFoundError` that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
KEYPOINT_EXTS = (".npy", ".json")


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


def _open_rgb(path: str, what: str) -> Image.Image:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e}") from e


def load_image(path: str, size: tuple[int, int] | None, what: str = "reference image") -> np.ndarray:
    """uint8 `[H, W, 3]`, resized (bicubic) to `size` = (height, width) when given."""
    im = _open_rgb(path, what)
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BICUBIC)
    return np.asarray(im, np.uint8)


def _resize_frames(frames: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    out = []
    for f in frames:
        if f.shape[:2] != tuple(size):
            f = np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.BILINEAR))
        out.append(f)
    return np.stack(out).astype(np.uint8)


def read_video(path: str, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decodes a video with PyAV: uint8 `[T, H, W, 3]` and its frame rate."""
    import av  # noqa: PLC0415  (heavy import only where videos are read)

    if not os.path.isfile(path):
        raise FileNotFoundError(f"pose video not found: {path}")
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"cannot read pose video {path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 8.0)
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(frames) >= max_frames:
                    break
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read pose video {path}: {e}") from e
    if not frames:
        raise ValueError(f"cannot read pose video {path}: it has no frames")
    return np.stack(frames), fps


def _render_keypoints(path: str, size: tuple[int, int], source_size: tuple[int, int] | None) -> np.ndarray:
    from humandiff.data import keypoints as kpl  # noqa: PLC0415
    from humandiff.data.pose_render import render_pose  # noqa: PLC0415

    kp = np.asarray(kpl.load_keypoints(path, video=True) if _is_video_keypoints(path)
                    else kpl.load_keypoints(path, video=False)[None])
    kp = kp.astype(np.float32).copy()
    if source_size is not None:  # keypoints are in pixels of the frame they were extracted from
        kp[..., 0] *= size[1] / source_size[1]
        kp[..., 1] *= size[0] / source_size[0]
    return np.stack([render_pose(k, size[0], size[1]) for k in kp])


def _is_video_keypoints(path: str) -> bool:
    if path.lower().endswith(".npy"):
        return np.load(path, mmap_mode="r", allow_pickle=False).ndim == 3
    import json  # noqa: PLC0415

    with open(path, encoding="utf-8") as f:
        return np.asarray(json.load(f)).ndim == 3


def load_poses(path: str, size: tuple[int, int], *, max_frames: int | None = None,
               keypoints_size: tuple[int, int] | None = None) -> tuple[np.ndarray, float | None]:
    """Pose images uint8 `[T, H, W, 3]` from a pose video, a folder of pose images, or a keypoints file.

    Args:
      path: `.mp4`/`.gif`/... video, a folder of `*.png`/`*.jpg` (sorted by name), or `.npy`/`.json` keypoints
        `[T, 133, 3]` / `[133, 3]` (rendered with `humandiff.data.pose_render.render_pose`).
      size: (height, width) of the output.
      max_frames: keep at most this many frames.
      keypoints_size: (height, width) of the frame the keypoints' pixel coordinates refer to (default: `size`).

    Returns:
      `(frames, fps)`; fps is the video's rate, or None for folders and keypoint files.
    """
    fps = None
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS))
        if not names:
            raise ValueError(f"pose folder {path} has no pose images ({', '.join('*' + e for e in IMAGE_EXTS)})")
        names = names[:max_frames] if max_frames else names
        frames = [np.asarray(_open_rgb(os.path.join(path, n), "pose image")) for n in names]
    elif path.lower().endswith(KEYPOINT_EXTS):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pose keypoints file not found: {path}")
        frames = list(_render_keypoints(path, size, keypoints_size))
        frames = frames[:max_frames] if max_frames else frames
    else:
        frames, fps = read_video(path, max_frames)
    return _resize_frames(frames, size), fps


def to_model_image(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return image.astype(np.float32) / 127.5 - 1.0


def to_pose_image(pose: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]."""
    return pose.astype(np.float32) / 255.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> uint8."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
    """H.264 (yuv420p) mp4 of uint8 `[T, H, W, 3]` frames (H, W even) with PyAV's bundled FFmpeg."""
    import av  # noqa: PLC0415
    from fractions import Fraction  # noqa: PLC0415

    t, h, w, _ = frames.shape
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    del t


def write_gif(path: str, frames: np.ndarray, fps: float) -> None:
    """Looping gif with Pillow."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)


def write_frames(folder: str, frames: np.ndarray) -> list[str]:
    """`frame_0000.png`, ... in `folder`; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        paths.append(os.path.join(folder, f"frame_{i:04d}.png"))
        Image.fromarray(f).save(paths[-1])
    return paths


def grid(reference: np.ndarray, poses: np.ndarray, results: np.ndarray) -> np.ndarray:
    """Per frame `[reference | pose | result]` side by side: uint8 `[T, H, 3W, 3]`."""
    ref = np.broadcast_to(reference[None], results.shape)
    return np.concatenate([ref, poses, results], axis=2)
