"""COCO-WholeBody keypoint layout, where pose files live, and the OpenPose-18 body view.

A frame's pose is float32 ``[133, 3]``: (x, y) in pixels of the frame and a detection score, in
COCO-WholeBody order (the order DWPose outputs). A video's poses are ``[T, 133, 3]``.

Pose files sit beside the video they describe, with the same stem: ``clip.mp4`` -> ``clip.npy``,
and a folder of frames ``00001/`` -> ``00001.npy`` (see `pose_path_for`). ``.npy`` is the storage
format; ``.json`` (a nested list ``[T][133][3]``) is accepted for hand-edited files. Reading, writing
and checking them: `humandiff.media.load_keypoints` / `save_keypoints` / `validate_keypoints`.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np

from humandiff.media import NUM_KEYPOINTS

PathLike = Union[str, os.PathLike]

NUM_BODY = 17
NUM_FACE = 68
NUM_HAND = 21

# Index ranges (half-open) in the 133-point layout.
BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)

BODY_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)
FEET_NAMES = (
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)
# Within a 21-point hand: 0 wrist, then 4 joints per finger (thumb, index, middle, ring, pinky),
# from the knuckle outwards.
HAND_FINGERS = ("thumb", "index", "middle", "ring", "pinky")

# Body keypoint indices by name (COCO order).
NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR = 0, 1, 2, 3, 4
LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_ELBOW, RIGHT_ELBOW = 5, 6, 7, 8
LEFT_WRIST, RIGHT_WRIST, LEFT_HIP, RIGHT_HIP = 9, 10, 11, 12
LEFT_KNEE, RIGHT_KNEE, LEFT_ANKLE, RIGHT_ANKLE = 13, 14, 15, 16

# OpenPose-18 body order: nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist,
# r-hip, r-knee, r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear. Entry i is the COCO
# index that OpenPose point i comes from; -1 marks the neck, which COCO lacks (shoulder midpoint).
OPENPOSE18_FROM_COCO = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)


def pose_path_for(video_path: PathLike) -> str:
    """Returns where a video's pose file lives: same folder, same stem, ``.npy``.

    ``a/b/clip.mp4`` -> ``a/b/clip.npy``; a frame folder ``a/00001`` (or ``a/00001/``) -> ``a/00001.npy``.
    """
    path = os.fspath(video_path).rstrip("/\\")
    if os.path.isdir(path):
        return path + ".npy"
    return os.path.splitext(path)[0] + ".npy"


def to_openpose18(keypoints: np.ndarray) -> np.ndarray:
    """Converts COCO-WholeBody body points to the OpenPose-18 body, inserting the neck.

    The neck is the shoulder midpoint; its score is the smaller of the two shoulder scores (so it is
    visible at a threshold exactly when both shoulders are).

    Args:
      keypoints: ``[..., 133, 3]`` (or ``[..., 17, 3]``, body only).

    Returns:
      ``[..., 18, 3]`` in OpenPose order (see `OPENPOSE18_FROM_COCO`).
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.ndim < 2 or kp.shape[-1] != 3 or kp.shape[-2] not in (NUM_BODY, NUM_KEYPOINTS):
        raise ValueError(f"to_openpose18: expected [..., 133, 3] or [..., 17, 3] keypoints, got {kp.shape}")
    idx = np.array([max(i, 0) for i in OPENPOSE18_FROM_COCO])
    out = kp[..., idx, :].copy()
    ls, rs = kp[..., LEFT_SHOULDER, :], kp[..., RIGHT_SHOULDER, :]
    out[..., 1, :2] = 0.5 * (ls[..., :2] + rs[..., :2])
    out[..., 1, 2] = np.minimum(ls[..., 2], rs[..., 2])
    return out


def first_outside(keypoints: np.ndarray, height: int, width: int, *, score_threshold: float = 0.3,
                  margin: float = 0.1) -> tuple[int, int] | None:
    """The first drawn point of a pose sequence that lies outside its frame, or None.

    A detector may place a point a little past the border (a hand leaving the picture); farther than `margin` of
    the frame's side, the coordinates are in pixels of another frame size.

    Args:
      keypoints: ``[T, 133, 3]`` with finite x, y in pixels of a ``height`` x ``width`` frame.
      height, width: the frame the coordinates refer to.
      score_threshold: points with a score <= this are not drawn (`render_pose`'s default) and not checked.
      margin: tolerated overshoot, as a fraction of the frame's side.

    Returns:
      ``(frame, keypoint)`` indices, or None when every drawn point is inside.
    """
    kp = np.asarray(keypoints, dtype=np.float32)
    x, y = kp[..., 0], kp[..., 1]
    outside = ((x < -margin * width) | (x > (1 + margin) * width) | (y < -margin * height)
               | (y > (1 + margin) * height)) & (kp[..., 2] > score_threshold)
    hits = np.argwhere(outside)
    return (int(hits[0][0]), int(hits[0][1])) if len(hits) else None
