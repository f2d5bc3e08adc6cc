"""Finding evaluation inputs: a folder of videos, each a folder of frames (PNG/JPG) or a video file (mp4, gif, ...).

Video ids are the sub-folder names or the file names without extension. A folder that holds frames directly (no
sub-folders, no video files) is read as a single video with id ".". The videos are read with
`humandiff.media.read_video`.
"""

from __future__ import annotations

import os

from humandiff import media

VIDEO_SUFFIXES = (".mp4", ".gif", ".avi", ".mov", ".webm", ".mkv")
SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
NAMED_SPLITS = {"tiktok": "tiktok_test.txt", "ubc_fashion": "ubc_fashion_test.txt"}


def list_videos(root: str) -> dict[str, str]:
    """Maps video id -> path (frame folder or video file) for every video under `root`."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input folder not found: {root}")
    out: dict[str, str] = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path) and media.list_frames(path):
            out[name] = path
        elif os.path.isfile(path) and name.lower().endswith(VIDEO_SUFFIXES):
            vid = os.path.splitext(name)[0]
            if vid in out:
                raise ValueError(f"video id {vid!r} appears twice in {root} (folder and file, or two files)")
            out[vid] = path
    if not out and media.list_frames(root):
        out["."] = root
    if not out:
        raise ValueError(
            f"no videos in {root}: expected sub-folders of frames ({', '.join(media.IMAGE_EXTS)}) or video files "
            f"({', '.join(VIDEO_SUFFIXES)})"
        )
    return out


def frame_names(path: str) -> list[str] | None:
    """Frame file names of a frame folder (None for a video file)."""
    return media.list_frames(path) if os.path.isdir(path) else None


def read_split(name_or_path: str) -> list[str]:
    """Video ids of a named split (`tiktok`, `ubc_fashion`) or of a text file (one id per line, `#` comments)."""
    path = os.path.join(SPLITS_DIR, NAMED_SPLITS[name_or_path]) if name_or_path in NAMED_SPLITS else name_or_path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list not found: {path} (named splits: {sorted(NAMED_SPLITS)})")
    with open(path, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return [os.path.splitext(i.rsplit("/", 1)[-1])[0] if i.endswith(VIDEO_SUFFIXES) else i for i in ids]
