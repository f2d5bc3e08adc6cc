"""TFDS builder: UBC-Fashion (Zablotskaia et al., "DwNet"), 500 train / 100 test catwalk videos.

Layout (`--manual_dir DIR`), as the dataset's download script leaves it:
    DIR/train/<name>.mp4   DIR/test/<name>.mp4
    DIR/train/<name>.npy   DIR/test/<name>.npy    poses beside each video, float32 [T, 133, 3]
    DIR/fashion_train.txt  DIR/fashion_test.txt   optional split lists (URLs or file names, one per line).
When a split list exists it is authoritative: every listed video must be present (a missing one is bad
input), unlisted files in the folder are ignored. Without a list, every mp4 in the split folder is used.
"""

from __future__ import annotations

import os

from data_pipelines.builders import common


class UbcFashion(common.VideoBuilderBase, skip_registration=True):
    """UBC-Fashion videos with DWPose keypoints."""

    name = "ubc_fashion"
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

    def _list_videos(self, manual_dir: str) -> dict[str, list[common.VideoItem]]:
        splits = {}
        for split in ("train", "test"):
            folder = os.path.join(manual_dir, split)
            listing = os.path.join(manual_dir, f"fashion_{split}.txt")
            if os.path.exists(listing):
                names = common.read_split_list(listing)
                names = [n if n.lower().endswith(".mp4") else n + ".mp4" for n in names]
            elif os.path.isdir(folder):
                names = sorted(f for f in os.listdir(folder) if f.lower().endswith(".mp4"))
            else:
                continue
            items = []
            for n in names:
                path = os.path.join(folder, n)
                items.append(common.VideoItem(os.path.splitext(n)[0], path, common.pose_path_for(path)))
            splits[split] = items
        if not splits:
            raise FileNotFoundError(f"{manual_dir}: expected train/ and/or test/ folders of mp4 videos")
        return splits

