"""TFDS builder: the public TikTok dataset (Jafarian & Park, CVPR 2021), 340 dance videos.

Layout (`--manual_dir DIR`), as `TikTok_dataset.zip` unpacks:
    DIR/<video_id>/images/<frame>.png     frames, in natural name order (1.png < 2.png < 10.png)
    DIR/<video_id>/masks/...              (ignored)
    DIR/<video_id>.npy                    poses beside each video folder, float32 [T, 133, 3]
    DIR/train.txt, DIR/test.txt           optional split lists of video ids; without them every video is
                                          `train` (DisCo's protocol holds out 00335-00340 as `test`).
"""

from __future__ import annotations

import os
import re

from data_pipelines.builders import common

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: frame2.png before frame10.png."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class Tiktok(common.VideoBuilderBase, skip_registration=True):
    """TikTok dance videos (frame folders) with DWPose keypoints."""

    name = "tiktok"
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

    def _list_videos(self, manual_dir: str) -> dict[str, list[common.VideoItem]]:
        ids = sorted(d for d in os.listdir(manual_dir) if os.path.isdir(os.path.join(manual_dir, d, "images")))
        listed = {}
        for split in ("train", "test"):
            path = os.path.join(manual_dir, f"{split}.txt")
            if os.path.exists(path):
                listed[split] = common.read_split_list(path)
        if not listed:
            listed = {"train": ids}
        splits = {}
        for split, names in listed.items():
            splits[split] = [self._item(manual_dir, n) for n in names]
        if not any(splits.values()):
            raise FileNotFoundError(f"{manual_dir}: no <video_id>/images/ folders found")
        return splits

    @staticmethod
    def _item(manual_dir: str, video_id: str) -> common.VideoItem:
        folder = os.path.join(manual_dir, video_id)
        images = os.path.join(folder, "images")
        if os.path.isdir(images):
            names = [f for f in os.listdir(images) if f.lower().endswith(FRAME_EXTENSIONS)]
            frames = tuple(os.path.join(images, f) for f in sorted(names, key=natural_key))
        else:
            frames = ()
        return common.VideoItem(video_id, folder, common.pose_path_for(folder), frames, frame_folder=True)
