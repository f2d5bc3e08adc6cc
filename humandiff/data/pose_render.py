"""Skeleton images in the DWPose / OpenPose colour scheme, from COCO-WholeBody keypoints.

What is drawn, on a black canvas, in RGB:
  * body (OpenPose-18 view, neck = shoulder midpoint): 17 limbs as filled ellipses in 18 fixed colours,
    the canvas is then dimmed to 60%, then the 18 joints as filled discs in the same colours;
  * hands: 20 edges per hand as lines coloured by hue (edge i of 20 -> HSV(i/20, 1, 1)), then the 21
    joints as blue discs;
  * face: the 68 landmarks as white discs.
Feet are not drawn (as DWPose). A keypoint is drawn only if its score is above ``score_threshold``
(a limb or edge needs both ends). Sizes follow DWPose at a 512-pixel short side (limb half-width 4,
joint radius 4, hand line width 2, hand dot radius 4, face dot radius 3) and scale with
``min(height, width) / 512``, never below one pixel. ``confidence_colors=True`` scales each colour by
the score (limbs and edges by the product of their two end scores), as MimicMotion does.
"""

from __future__ import annotations

import colorsys
from typing import Optional

import cv2
import numpy as np

from humandiff.data import keypoints as kpl

# (start, end) indices into the OpenPose-18 body; only these 17 of OpenPose's 19 limbs are drawn.
BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
# Limb i and OpenPose joint i share colour i.
BODY_COLORS = np.array(
    [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
     [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
     [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]],
    dtype=np.float64,
)
# Within a 21-point hand: wrist -> each finger's four joints.
HAND_EDGES = tuple((0 if j == 0 else 4 * f + j, 4 * f + j + 1) for f in range(5) for j in range(4))
HAND_EDGE_COLORS = np.array(
    [np.rint(np.array(colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)) * 255) for i in range(len(HAND_EDGES))]
)
HAND_POINT_COLOR = np.array([0.0, 0.0, 255.0])
FACE_POINT_COLOR = np.array([255.0, 255.0, 255.0])
BODY_DIM = 0.6

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT
_ELLIPSE_T = np.linspace(0.0, 2.0 * np.pi, 37)[:-1]


def _fixed(xy: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> OpenCV fixed point with `_SHIFT` fractional bits."""
    return np.rint(np.asarray(xy, dtype=np.float64) * _ONE).astype(np.int32)


def _color(base: np.ndarray, conf: float, use_conf: bool) -> tuple:
    c = base * (min(max(conf, 0.0), 1.0) if use_conf else 1.0)
    return tuple(float(v) for v in np.floor(c + 1e-6))


def _visible(points: np.ndarray, threshold: float) -> np.ndarray:
    return (points[:, 2] > threshold) & np.all(np.isfinite(points[:, :2]), axis=1)


def _fill_limb(canvas: np.ndarray, a: np.ndarray, b: np.ndarray, half_width: float, color: tuple) -> None:
    """Filled ellipse spanning a->b (semi-axes |ab|/2 and ``half_width``)."""
    center = 0.5 * (a + b)
    d = b - a
    length = float(np.hypot(d[0], d[1]))
    u = d / length if length > 0 else np.array([1.0, 0.0])
    n = np.array([-u[1], u[0]])
    pts = (center[None] + np.cos(_ELLIPSE_T)[:, None] * (0.5 * length) * u[None]
           + np.sin(_ELLIPSE_T)[:, None] * half_width * n[None])
    cv2.fillConvexPoly(canvas, _fixed(pts), color, cv2.LINE_8, _SHIFT)


def _disc(canvas: np.ndarray, xy: np.ndarray, radius: float, color: tuple) -> None:
    cv2.circle(canvas, tuple(int(v) for v in _fixed(xy)), int(round(radius * _ONE)), color, -1, cv2.LINE_8, _SHIFT)


def _draw_body(canvas: np.ndarray, body: np.ndarray, thr: float, scale: float, use_conf: bool) -> np.ndarray:
    vis = _visible(body, thr)
    half_width = max(1.0, 4.0 * scale)
    for i, (p, q) in enumerate(BODY_LIMBS):
        if vis[p] and vis[q]:
            color = _color(BODY_COLORS[i], body[p, 2] * body[q, 2], use_conf)
            _fill_limb(canvas, body[p, :2], body[q, :2], half_width, color)
    canvas = (canvas * BODY_DIM).astype(np.uint8)
    radius = max(1.0, round(4.0 * scale))
    for j in range(len(body)):
        if vis[j]:
            _disc(canvas, body[j, :2], radius, _color(BODY_COLORS[j], body[j, 2], use_conf))
    return canvas


def _draw_hand(canvas: np.ndarray, hand: np.ndarray, thr: float, scale: float, use_conf: bool) -> None:
    vis = _visible(hand, thr)
    width = int(max(1, round(2.0 * scale)))
    for i, (p, q) in enumerate(HAND_EDGES):
        if vis[p] and vis[q]:
            color = _color(HAND_EDGE_COLORS[i], hand[p, 2] * hand[q, 2], use_conf)
            a, b = _fixed(hand[p, :2]), _fixed(hand[q, :2])
            cv2.line(canvas, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), color, width, cv2.LINE_8, _SHIFT)
    radius = max(1.0, round(4.0 * scale))
    for j in range(len(hand)):
        if vis[j]:
            _disc(canvas, hand[j, :2], radius, _color(HAND_POINT_COLOR, hand[j, 2], use_conf))


def _draw_face(canvas: np.ndarray, face: np.ndarray, thr: float, scale: float, use_conf: bool) -> None:
    vis = _visible(face, thr)
    radius = max(1.0, round(3.0 * scale))
    for j in range(len(face)):
        if vis[j]:
            _disc(canvas, face[j, :2], radius, _color(FACE_POINT_COLOR, face[j, 2], use_conf))


def render_pose(
    keypoints: np.ndarray,
    height: int,
    width: int,
    *,
    score_threshold: float = 0.3,
    confidence_colors: bool = False,
    scale: Optional[float] = None,
) -> np.ndarray:
    """Draws one frame's skeleton.

    Args:
      keypoints: float ``[133, 3]`` COCO-WholeBody (x, y in pixels of a ``height`` x ``width`` frame, score).
      height: output height in pixels.
      width: output width in pixels.
      score_threshold: keypoints with score <= this are not drawn (nor limbs/edges touching them).
      confidence_colors: scale colours by keypoint scores (MimicMotion style).
      scale: size multiplier for limb widths and dot radii; default ``min(height, width) / 512``.

    Returns:
      uint8 ``[height, width, 3]`` RGB image.
    """
    kp = kpl.validate_keypoints(keypoints, video=False, source="render_pose keypoints").astype(np.float64)
    if height <= 0 or width <= 0:
        raise ValueError(f"render_pose: height and width must be positive, got {height}x{width}")
    s = min(height, width) / 512.0 if scale is None else float(scale)
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas = _draw_body(canvas, kpl.to_openpose18(kp).astype(np.float64), score_threshold, s, confidence_colors)
    for hand in (kp[kpl.LEFT_HAND], kp[kpl.RIGHT_HAND]):
        _draw_hand(canvas, hand, score_threshold, s, confidence_colors)
    _draw_face(canvas, kp[kpl.FACE], score_threshold, s, confidence_colors)
    return canvas


def render_video(
    keypoints: np.ndarray,
    height: int,
    width: int,
    *,
    score_threshold: float = 0.3,
    confidence_colors: bool = False,
    scale: Optional[float] = None,
) -> np.ndarray:
    """Draws every frame of a ``[T, 133, 3]`` pose sequence; returns uint8 ``[T, height, width, 3]``."""
    kp = kpl.validate_keypoints(keypoints, video=True, source="render_video keypoints")
    out = np.empty((kp.shape[0], height, width, 3), np.uint8)
    for t in range(kp.shape[0]):
        out[t] = render_pose(kp[t], height, width, score_threshold=score_threshold,
                             confidence_colors=confidence_colors, scale=scale)
    return out
