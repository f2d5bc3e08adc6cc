"""TFDS builder: a generic folder of mp4 videos (your own dance data).

Layout (`--manual_dir DIR`):
    DIR/**/<name>.mp4      any depth; the video id is the path relative to DIR without extension
    DIR/**/<name>.npy      poses beside each video: float32 [T, 133, 3] (DWPose extractor output)
    DIR/test.txt           optional: relative paths (or names) of videos that form the `test` split;
                                                  everything else is `train`.
"""

from __future__ import annotations

import os

from data_pipelines.builders import common

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def find_videos(root: str) -> list[str]:
    """Sorted video files under `root` (relative paths)."""
    found = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(VIDEO_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(found)


class VideoFolder(common.VideoBuilderBase, skip_registration=True):
    """Videos from a folder of mp4 files with DWPose keypoints beside them."""

    name = "video_folder"
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

    def _list_videos(self, manual_dir: str) -> dict[str, list[common.VideoItem]]:
        test_list = os.path.join(manual_dir, "test.txt")
        test = set()
        if os.path.exists(test_list):
            test = {os.path.splitext(n)[0] for n in _read_rel_list(test_list)}
        splits: dict[str, list[common.VideoItem]] = {"train": []}
        for rel in find_videos(manual_dir):
            vid = os.path.splitext(rel)[0]
            path = os.path.join(manual_dir, rel)
            split = "test" if (vid in test or os.path.basename(vid) in test) else "train"
            splits.setdefault(split, []).append(common.VideoItem(vid, path, common.pose_path_for(path)))
        if not any(splits.values()):
            raise FileNotFoundError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {manual_dir}")
        return splits


def _read_rel_list(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
