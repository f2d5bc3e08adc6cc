"""TFDS builder: the public TikTok dataset (Jafarian & Park, CVPR 2021), 340 dance videos.

Layout (`--manual_dir DIR`), as `TikTok_dataset.zip` unpacks:
    DIR/<video_id>/images/<frame>.png     frames, sorted by name (0001.png, 0002.png, ...)
    DIR/<video_id>/masks/...              (ignored)
    DIR/<video_id>.npy                    poses beside each video folder, float32 [T, 133, 3]
    DIR/train.txt, DIR/test.txt           optional split lists of video ids; without them every video is
                                                                                `train` (DisCo's protocol holds out 00335-00340 as `test`).
"""

from __future__ import annotations

import os

from data_pipelines.builders import common

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")


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
            frames = tuple(os.path.join(images, f) for f in sorted(os.listdir(images))
                                          if f.lower().endswith(FRAME_EXTENSIONS))
        else:
            frames = ()
        return common.VideoItem(video_id, folder, common.pose_path_for(folder), frames, frame_folder=True)
