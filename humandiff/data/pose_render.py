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

from humandiff import media
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
_DIM_LUT = (np.arange(256) * BODY_DIM).astype(np.uint8)  # floor(v * 0.6), as a table lookup

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT
_ELLIPSE_T = np.linspace(0.0, 2.0 * np.pi, 37)[:-1]
_FAR = float(2**20)  # coordinates are clipped to +-_FAR pixels so fixed-point values fit in int32


def _colors(base: np.ndarray, conf: np.ndarray, use_conf: bool) -> list:
    """``[N, 3]`` base colours (scaled by ``conf`` in [0, 1] if ``use_conf``) as OpenCV colour lists."""
    if use_conf:
        base = np.floor(base * np.clip(conf, 0.0, 1.0)[:, None] + 1e-6)
    return base.tolist()


def _visible(points: np.ndarray, threshold: float) -> np.ndarray:
    return (points[:, 2] > threshold) & np.all(np.isfinite(points[:, :2]), axis=1)


def _fixed(xy: np.ndarray) -> list:
    """Pixel coordinates ``[N, 2]`` -> OpenCV fixed-point point tuples (`_SHIFT` fractional bits)."""
    xy = np.clip(np.nan_to_num(xy), -_FAR, _FAR)
    return [tuple(p) for p in np.rint(xy * _ONE).astype(np.int32).tolist()]


def _limb_polygons(a: np.ndarray, b: np.ndarray, half_width: float) -> np.ndarray:
    """Ellipses spanning ``a[i] -> b[i]`` (semi-axes |ab|/2 and ``half_width``) as int32 ``[N, 36, 2]`` fixed point."""
    a, b = np.clip(a, -_FAR, _FAR), np.clip(b, -_FAR, _FAR)
    center = 0.5 * (a + b)
    d = b - a
    length = np.hypot(d[:, 0], d[:, 1])
    u = np.where(length[:, None] > 0, d / np.maximum(length, 1e-12)[:, None], [1.0, 0.0])
    n = np.stack([-u[:, 1], u[:, 0]], -1)
    cos, sin = np.cos(_ELLIPSE_T)[None, :, None], np.sin(_ELLIPSE_T)[None, :, None]
    pts = center[:, None] + cos * (0.5 * length)[:, None, None] * u[:, None] + sin * half_width * n[:, None]
    return np.rint(pts * _ONE).astype(np.int32)


def _discs(canvas: np.ndarray, points: np.ndarray, vis: np.ndarray, radius: float, colors: list) -> None:
    r = int(round(radius * _ONE))
    for j, (p, c) in enumerate(zip(_fixed(points[:, :2]), colors)):
        if vis[j]:
            cv2.circle(canvas, p, r, c, -1, cv2.LINE_8, _SHIFT)


def _draw_body(canvas: np.ndarray, body: np.ndarray, thr: float, scale: float, use_conf: bool) -> np.ndarray:
    vis = _visible(body, thr)
    limbs = np.array(BODY_LIMBS)
    on = vis[limbs[:, 0]] & vis[limbs[:, 1]]
    if on.any():
        idx = np.flatnonzero(on)
        polys = _limb_polygons(body[limbs[idx, 0], :2], body[limbs[idx, 1], :2], max(1.0, 4.0 * scale))
        colors = _colors(BODY_COLORS[idx], body[limbs[idx, 0], 2] * body[limbs[idx, 1], 2], use_conf)
        for poly, color in zip(polys, colors):
            cv2.fillConvexPoly(canvas, poly, color, cv2.LINE_8, _SHIFT)
    canvas = cv2.LUT(canvas, _DIM_LUT)
    _discs(canvas, body, vis, max(1.0, round(4.0 * scale)), _colors(BODY_COLORS, body[:, 2], use_conf))
    return canvas


def _draw_hand(canvas: np.ndarray, hand: np.ndarray, thr: float, scale: float, use_conf: bool) -> None:
    vis = _visible(hand, thr)
    edges = np.array(HAND_EDGES)
    width = int(max(1, round(2.0 * scale)))
    pts = _fixed(hand[:, :2])
    colors = _colors(HAND_EDGE_COLORS, hand[edges[:, 0], 2] * hand[edges[:, 1], 2], use_conf)
    for (p, q), color in zip(HAND_EDGES, colors):
        if vis[p] and vis[q]:
            cv2.line(canvas, pts[p], pts[q], color, width, cv2.LINE_8, _SHIFT)
    _discs(canvas, hand, vis, max(1.0, round(4.0 * scale)),
           _colors(np.broadcast_to(HAND_POINT_COLOR, (len(hand), 3)), hand[:, 2], use_conf))


def _draw_face(canvas: np.ndarray, face: np.ndarray, thr: float, scale: float, use_conf: bool) -> None:
    _discs(canvas, face, _visible(face, thr), max(1.0, round(3.0 * scale)),
           _colors(np.broadcast_to(FACE_POINT_COLOR, (len(face), 3)), face[:, 2], use_conf))


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
    kp = media.validate_keypoints(keypoints, video=False, source="render_pose keypoints").astype(np.float64)
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
    kp = media.validate_keypoints(keypoints, video=True, source="render_video keypoints")
    out = np.empty((kp.shape[0], height, width, 3), np.uint8)
    for t in range(kp.shape[0]):
        out[t] = render_pose(kp[t], height, width, score_threshold=score_threshold,
                             confidence_colors=confidence_colors, scale=scale)
    return out
