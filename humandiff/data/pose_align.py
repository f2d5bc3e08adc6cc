"""Align a driving pose sequence to a reference image's body: one uniform scale and a translation.

Users animate a reference person with the motion of someone else, whose body is larger or smaller and
stands elsewhere in the frame. Rendering the driving skeleton as is makes the generated person grow,
shrink or slide (a frequent complaint about AnimateAnyone-style tools). `align_poses` rescales and
moves the whole driving sequence, keeping its motion, so that its body size and position match the
reference's:

* scale = median over body segments (shoulder width, torso sides, hip width, upper/lower arms and legs)
  of ``reference length / driving length``, where each driving length is the median over the frames in
  which both ends are visible; segments missing in either pose are ignored, so occluded points are fine;
* translation: after scaling, the body points visible both in the reference and in the driving anchor
  frame (the first frame by default) get the same centroid as in the reference.
Scores are kept; coordinates of every point (visible or not) are transformed.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from humandiff import media
from humandiff.data import keypoints as kpl

# COCO body segments used to measure body scale.
SCALE_SEGMENTS = (
    (5, 6), (5, 11), (6, 12), (11, 12),  # shoulders, torso sides, hips
    (5, 7), (7, 9), (6, 8), (8, 10),  # arms
    (11, 13), (13, 15), (12, 14), (14, 16),  # legs
)


def _segment_lengths(kp: np.ndarray, threshold: float) -> np.ndarray:
    """``[..., S]`` lengths of `SCALE_SEGMENTS`, NaN where an end is below ``threshold``."""
    a = np.array([s[0] for s in SCALE_SEGMENTS])
    b = np.array([s[1] for s in SCALE_SEGMENTS])
    length = np.linalg.norm(kp[..., a, :2] - kp[..., b, :2], axis=-1)
    ok = (kp[..., a, 2] > threshold) & (kp[..., b, 2] > threshold) & (length > 1e-6)
    return np.where(ok, length, np.nan)


def estimate_alignment(driving: np.ndarray, reference: np.ndarray, *, score_threshold: float = 0.3,
                       anchor_frame: int = 0) -> Tuple[float, np.ndarray]:
    """Returns ``(scale, translation)`` such that ``aligned_xy = scale * driving_xy + translation``.

    Args:
      driving: ``[T, 133, 3]`` driving poses.
      reference: ``[133, 3]`` reference pose.
      score_threshold: points with score <= this count as missing.
      anchor_frame: the driving frame whose body centroid is moved onto the reference's.

    Raises:
      ValueError: wrong shapes, or no body segment / body point visible in both poses.
    """
    drv = media.validate_keypoints(driving, video=True, source="align_poses driving")
    ref = media.validate_keypoints(reference, video=False, source="align_poses reference")
    if not -drv.shape[0] <= anchor_frame < drv.shape[0]:
        raise ValueError(f"align_poses: anchor_frame {anchor_frame} out of range for {drv.shape[0]} frames")
    ref_len = _segment_lengths(ref, score_threshold)
    seg = _segment_lengths(drv, score_threshold)  # [T, S]
    seen = ~np.all(np.isnan(seg), axis=0)
    drv_len = np.full(seg.shape[1], np.nan)
    drv_len[seen] = np.nanmedian(seg[:, seen], axis=0)
    ratios = ref_len / drv_len
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        raise ValueError("align_poses: no body segment (shoulders, hips, arms, legs) is visible in both the "
                         "reference and the driving poses; cannot estimate the body scale")
    scale = float(np.median(ratios))
    anchor = drv[anchor_frame, kpl.BODY]
    both = (anchor[:, 2] > score_threshold) & (ref[kpl.BODY, 2] > score_threshold)
    if not both.any():
        raise ValueError(f"align_poses: no body point is visible in both the reference and driving frame "
                         f"{anchor_frame}; cannot estimate the position")
    translation = ref[kpl.BODY][both, :2].mean(0) - scale * anchor[both, :2].mean(0)
    return scale, translation.astype(np.float64)


def align_poses(driving: np.ndarray, reference: np.ndarray, *, score_threshold: float = 0.3,
                anchor_frame: int = 0) -> np.ndarray:
    """Rescales and moves a driving sequence ``[T, 133, 3]`` onto the reference ``[133, 3]``'s body.

    See the module docstring and `estimate_alignment` for the method and arguments.

    Returns:
      float32 ``[T, 133, 3]``: transformed coordinates, unchanged scores.
    """
    scale, translation = estimate_alignment(driving, reference, score_threshold=score_threshold,
                                            anchor_frame=anchor_frame)
    out = np.array(driving, dtype=np.float32, copy=True)
    out[..., :2] = (scale * out[..., :2].astype(np.float64) + translation).astype(np.float32)
    return out
