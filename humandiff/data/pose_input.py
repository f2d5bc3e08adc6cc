"""Pose images for the sampler: from a pose video, a folder of pose images, or a keypoint file (rendered).

Files are read by `humandiff.media`; keypoints are drawn by `humandiff.data.pose_render.render_pose`. Errors name
the file in the sampler CLI's words ("pose video not found", "cannot read pose video ...").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from humandiff import media
from humandiff.data import keypoints
from humandiff.data.pose_render import render_pose


def _resize_frames(frames: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    out = []
    for f in frames:
        if f.shape[:2] != tuple(size):
            f = np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.BILINEAR))
        out.append(f)
    return np.stack(out).astype(np.uint8)


def _render_keypoints(path: str, size: tuple[int, int], source_size: tuple[int, int] | None) -> np.ndarray:
    # A [133, 3] file is one frame. Coordinates must be finite (a NaN point would vanish without a word) and inside
    # the frame they refer to (else they are in pixels of another size: the pose would be drawn off the canvas).
    kp = media.load_keypoints(path, allow_single_frame=True).copy()
    h, w = source_size or size
    outside = keypoints.first_outside(kp, h, w)
    if outside is not None:
        t, k = outside
        raise ValueError(f"keypoints outside the frame in {path}: frame {t}, keypoint {k} is at x={kp[t, k, 0]:g}, "
                         f"y={kp[t, k, 1]:g}, outside the {h}x{w} (HxW) frame the coordinates should refer to; pass "
                         "--keypoints-size HxW of the video the keypoints were extracted from")
    if source_size is not None:  # keypoints are in pixels of the frame they were extracted from
        kp[..., 0] *= size[1] / source_size[1]
        kp[..., 1] *= size[0] / source_size[0]
    return np.stack([render_pose(k, size[0], size[1]) for k in kp])


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
      `(frames, fps)`; fps is the video's rate (8 when it does not say), or None for folders and keypoint files.
    """
    fps = None
    if os.path.isdir(path):
        names = media.list_frames(path)
        if not names:
            raise ValueError(f"pose folder {path} has no pose images "
                             f"({', '.join('*' + e for e in media.IMAGE_EXTS)})")
        names = names[:max_frames] if max_frames else names
        frames = [media.load_image(os.path.join(path, n), None, "pose image") for n in names]
    elif path.lower().endswith(media.KEYPOINT_EXTS):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pose keypoints file not found: {path}")
        frames = list(_render_keypoints(path, size, keypoints_size))
        frames = frames[:max_frames] if max_frames else frames
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pose video not found: {path}")
        try:
            frames, fps = media.read_video(path, max_frames=max_frames)
        except media.BadInputError as e:
            raise ValueError(f"cannot read pose video {path}: {e.reason}") from e
        fps = fps or 8.0
    return _resize_frames(frames, size), fps
