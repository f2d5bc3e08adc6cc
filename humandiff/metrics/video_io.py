"""Reading evaluation inputs: a folder of videos, each a folder of frames (PNG/JPG) or a video file (mp4, gif, ...).

Video ids are the sub-folder names or the file names without extension. A folder that holds frames directly (no
sub-folders, no video files) is read as a single video with id ".".
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".avi", ".mov", ".webm", ".mkv")
SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
NAMED_SPLITS = {"tiktok": "tiktok_test.txt", "ubc_fashion": "ubc_fashion_test.txt"}


def _frames_in(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(FRAME_SUFFIXES))


def list_videos(root: str) -> dict[str, str]:
    """Maps video id -> path (frame folder or video file) for every video under `root`."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input folder not found: {root}")
    out: dict[str, str] = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path) and _frames_in(path):
            out[name] = path
        elif os.path.isfile(path) and name.lower().endswith(VIDEO_SUFFIXES):
            vid = os.path.splitext(name)[0]
            if vid in out:
                raise ValueError(f"video id {vid!r} appears twice in {root} (folder and file, or two files)")
            out[vid] = path
    if not out and _frames_in(root):
        out["."] = root
    if not out:
        raise ValueError(
            f"no videos in {root}: expected sub-folders of frames ({', '.join(FRAME_SUFFIXES)}) or video files "
            f"({', '.join(VIDEO_SUFFIXES)})"
        )
    return out


def frame_names(path: str) -> list[str] | None:
    """Frame file names of a frame folder (None for a video file)."""
    return _frames_in(path) if os.path.isdir(path) else None


def read_video(path: str) -> np.ndarray:
    """Reads all frames as uint8 RGB `[T, H, W, 3]`; errors name the file."""
    if os.path.isdir(path):
        frames = []
        for name in _frames_in(path):
            with Image.open(os.path.join(path, name)) as im:
                frames.append(np.asarray(im.convert("RGB")))
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise ValueError(f"frames of {path} differ in size: {sorted(shapes)}")
        return np.stack(frames)
    import av  # pylint: disable=import-outside-toplevel

    try:
        with av.open(path) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"could not decode video {path}: {e}") from e
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


def read_split(name_or_path: str) -> list[str]:
    """Video ids of a named split (`tiktok`, `ubc_fashion`) or of a text file (one id per line, `#` comments)."""
    path = os.path.join(SPLITS_DIR, NAMED_SPLITS[name_or_path]) if name_or_path in NAMED_SPLITS else name_or_path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list not found: {path} (named splits: {sorted(NAMED_SPLITS)})")
    with open(path, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return [os.path.splitext(i.rsplit("/", 1)[-1])[0] if i.endswith(VIDEO_SUFFIXES) else i for i in ids]
