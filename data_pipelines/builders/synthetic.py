"""TFDS builder: the procedural synthetic dance set (`humandiff.data.synthetic`), no raw files needed.

Splits `train` and `test` (`humandiff.data.synthetic.SyntheticSource` splits: disjoint identities).
Same frame records as the real video datasets (JPEG frames, COCO-WholeBody keypoints [133, 3] each).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from data_pipelines.builders import common
from humandiff import media


class Synthetic(common.VideoBuilderBase, skip_registration=True):
    """Synthetic articulated figures with per-identity appearance and random motion."""

    name = "synthetic"

    def __init__(self, *, num_videos: int = 64, num_test_videos: int = 8, num_frames: int = 24,
                 height: int = 64, width: int = 64, seed: int = 0, fps: float = 8.0, **kwargs):
        """Args: sizes of the generated set; `seed` offsets every video's seed; rest as the base builder."""
        self._sizes = dict(num_videos=num_videos, num_test_videos=num_test_videos, num_frames=num_frames,
                           height=height, width=width, seed=seed, fps=fps)
        super().__init__(**kwargs)

    def _list_videos(self, manual_dir: str):  # not used: videos are generated
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        del dl_manager
        s = self._sizes
        splits = {"train": self._generate_examples("train", s["num_videos"])}
        if s["num_test_videos"]:
            splits["test"] = self._generate_examples("test", s["num_test_videos"])
        return splits

    def _generate_examples(self, split: str, num_videos: int) -> Iterator[tuple[str, dict[str, Any]]]:
        from humandiff.data import synthetic  # runtime dependency of this builder only

        s = self._sizes
        source = synthetic.SyntheticSource(num_videos, s["num_frames"], s["height"], s["width"], s["seed"],
                                           split=split)
        for i in range(num_videos):
            video = source[i]
            frames = np.asarray(video["frames"], np.uint8)
            yield from common.frame_records({
                "video_id": video["video_id"],
                "frames_jpeg": [media.encode_jpeg(f, self._jpeg_quality) for f in frames],
                "keypoints": np.asarray(video["keypoints"], np.float32),
                "fps": float(video.get("fps", s["fps"])), "height": frames.shape[1], "width": frames.shape[2],
            })
        self.info.metadata.update(self._policy.as_metadata())
