"""Minimal stand-ins for humandiff.data.{pose_render,synthetic} until the data-pose engineer's land.

Installed into sys.modules only when the real modules are missing (see conftest.py).
"""

import sys
import types

import numpy as np


def render_pose(keypoints, height, width, *, score_threshold=0.3, confidence_colors=False):
    del confidence_colors
    canvas = np.zeros((height, width, 3), np.uint8)
    for i, (x, y, s) in enumerate(np.asarray(keypoints)):
        xi, yi = int(round(x)), int(round(y))
        if s > score_threshold and 0 <= xi < width and 0 <= yi < height:
            canvas[yi, xi] = (255, (i * 7) % 256, 128)
    return canvas


def make_video(seed, num_frames, height, width):
    rng = np.random.default_rng(seed)
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = (seed * 37) % 256
    frames[..., 1] = (np.arange(num_frames) * 9 % 256)[:, None, None]
    frames[..., 2] = 128
    kp = np.concatenate([rng.uniform(0, [width, height], (num_frames, 133, 2)),
                         rng.uniform(0, 1, (num_frames, 133, 1))], -1).astype(np.float32)
    return {"frames": frames, "keypoints": kp, "video_id": f"synthetic_{seed:05d}"}


class SyntheticSource:
    def __init__(self, num_videos, num_frames, height, width, seed=0):
        self.n, self.t, self.h, self.w, self.seed = num_videos, num_frames, height, width, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return make_video(self.seed + int(i), self.t, self.h, self.w)


def install():
    """Registers the stand-ins for the modules that cannot be imported."""
    import humandiff.data

    try:
        import humandiff.data.pose_render  # noqa: F401
    except ImportError:
        m = types.ModuleType("humandiff.data.pose_render")
        m.render_pose = render_pose
        sys.modules[m.__name__] = m
        humandiff.data.pose_render = m
    try:
        import humandiff.data.synthetic  # noqa: F401
    except ImportError:
        m = types.ModuleType("humandiff.data.synthetic")
        m.make_video, m.SyntheticSource = make_video, SyntheticSource
        sys.modules[m.__name__] = m
        humandiff.data.synthetic = m
