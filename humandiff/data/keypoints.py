"""COCO-WholeBody keypoint layout, keypoint file IO and the OpenPose-18 body view.

A frame's pose is float32 ``[133, 3]``: (x, y) in pixels of the frame and a detection score, in
COCO-WholeBody order (the order DWPose outputs). A video's poses are ``[T, 133, 3]``.

Pose files sit beside the video they describe, with the same stem: ``clip.mp4`` -> ``clip.npy``,
and a folder of frames ``00001/`` -> ``00001.npy`` (see `pose_path_for`). ``.npy`` is the storage
format; ``.json`` (a nested list ``[T][133][3]``) is accepted for hand-edited files.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]

NUM_KEYPOINTS = 133
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


def validate_keypoints(keypoints: np.ndarray, *, video: bool, source: str = "keypoints") -> np.ndarray:
    """Checks the shape of a pose array and returns it as float32.

    Args:
      keypoints: ``[133, 3]`` (``video=False``) or ``[T, 133, 3]`` (``video=True``).
      video: whether a sequence of frames is expected.
      source: what to name in the error (a file path, an argument name).

    Returns:
      The array as float32 (a copy only if the dtype differs).

    Raises:
      ValueError: wrong rank, wrong trailing shape, or non-finite scores.
    """
    arr = np.asarray(keypoints)
    want = "[T, 133, 3]" if video else "[133, 3]"
    ndim = 3 if video else 2
    if arr.ndim != ndim or arr.shape[-2:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"{source}: expected COCO-WholeBody keypoints of shape {want}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{source}: expected a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr[..., 2])):
        raise ValueError(f"{source}: keypoint scores contain NaN or inf")
    return arr


def pose_path_for(video_path: PathLike) -> str:
    """Returns where a video's pose file lives: same folder, same stem, ``.npy``.

    ``a/b/clip.mp4`` -> ``a/b/clip.npy``; a frame folder ``a/00001`` (or ``a/00001/``) -> ``a/00001.npy``.
    """
    path = os.fspath(video_path).rstrip("/\\")
    if os.path.isdir(path):
        return path + ".npy"
    return os.path.splitext(path)[0] + ".npy"


def save_keypoints(path: PathLike, keypoints: np.ndarray) -> None:
    """Writes a video's keypoints ``[T, 133, 3]`` (or one frame's ``[133, 3]``) to ``.npy`` or ``.json``.

    Raises:
      ValueError: wrong shape or an unknown file extension.
    """
    path = os.fspath(path)
    arr = np.asarray(keypoints)
    arr = validate_keypoints(arr, video=arr.ndim == 3, source=f"keypoints for {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        np.save(path, arr, allow_pickle=False)
    elif ext == ".json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(arr.tolist(), f)
    else:
        raise ValueError(f"{path}: keypoint files must end in .npy or .json, got {ext!r}")


def load_keypoints(path: PathLike, *, num_frames: Optional[int] = None, video: bool = True) -> np.ndarray:
    """Reads keypoints written by `save_keypoints` (or DWPose extraction).

    Args:
      path: ``.npy`` or ``.json`` file.
      num_frames: if given, the number of frames the video has; the file must have exactly as many.
      video: expect ``[T, 133, 3]`` (True) or a single frame ``[133, 3]`` (False).

    Returns:
      float32 ``[T, 133, 3]`` or ``[133, 3]``.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: unreadable content, wrong shape, or a frame count that differs from ``num_frames``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pose file missing: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif ext == ".json":
            with open(path, encoding="utf-8") as f:
                arr = np.asarray(json.load(f), dtype=np.float32)
        else:
            raise ValueError(f"{path}: keypoint files must end in .npy or .json, got {ext!r}")
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read keypoints ({e})") from e
    arr = validate_keypoints(arr, video=video, source=path)
    if video and num_frames is not None and arr.shape[0] != num_frames:
        kind = "short" if arr.shape[0] < num_frames else "long"
        raise ValueError(
            f"{path}: pose file too {kind}: {arr.shape[0]} frames of keypoints for a video of {num_frames} frames"
        )
    return arr


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
