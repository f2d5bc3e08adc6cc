"""Skeleton and appearance of the procedural figures behind `humandiff.data.synthetic`.

A figure is a 2D kinematic tree seen from the front: pelvis -> torso -> neck -> head, shoulders ->
upper arms -> forearms -> hands (21 points each), hips -> thighs -> shins -> feet, plus a 68-point
face on the head. Joint angles are smooth sums of sinusoids (random per video); body proportions
and colours belong to the identity. `figure_keypoints` returns the 133 COCO-WholeBody points per
frame and the extra joints the renderer needs.

Angle convention: an angle ``a`` points along ``(sin a, cos a)`` in image coordinates (x right,
y down), so 0 is straight down and positive turns towards image right. The figure faces the camera,
so its left side (COCO "left_*") is on the image right.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np

from humandiff.data import keypoints as kpl

IDENTITY_DOMAIN = 0x1D  # seed-sequence domain tags: identity and motion draw from unrelated streams
MOTION_DOMAIN = 0x30

PATTERNS = ("solid", "hstripes", "vstripes", "checks")

# Fingers in hand-local polar form: (direction from the hand axis towards the thumb side [rad],
# knuckle distance, finger length), in palm lengths. The thumb's first joint is its CMC joint.
_FINGERS = ((0.75, 0.25, 0.55), (0.22, 0.9, 0.7), (0.05, 0.95, 0.78), (-0.12, 0.9, 0.72), (-0.28, 0.82, 0.55))
_PHALANX = np.array([0.45, 0.30, 0.25])


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Everything about a figure that is fixed per identity (colours are RGB floats in 0..255)."""

    skin: np.ndarray
    hair: np.ndarray
    shirt: np.ndarray
    shirt2: np.ndarray
    pants: np.ndarray
    shoes: np.ndarray
    bg_top: np.ndarray
    bg_bottom: np.ndarray
    floor: np.ndarray
    pattern: str
    pattern_count: int
    lengths: Dict[str, float]  # segment lengths in figure-height units
    widths: Dict[str, float]  # limb thicknesses in figure-height units


def _hsv(rng: np.random.Generator, s: Tuple[float, float], v: Tuple[float, float]) -> np.ndarray:
    h = rng.uniform(0.0, 1.0)
    sat, val = rng.uniform(*s), rng.uniform(*v)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.array(rgb) * 255.0


def _distinct(rng: np.random.Generator, avoid: np.ndarray, min_dist: float = 90.0) -> np.ndarray:
    """A saturated colour at least ``min_dist`` (RGB Euclidean) from every colour in ``avoid``."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = _hsv(rng, (0.4, 1.0), (0.35, 1.0))
        d = float(np.min(np.linalg.norm(avoid - c[None], axis=1)))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def make_appearance(identity: int) -> Appearance:
    """Draws the colours, clothing pattern and body proportions of identity ``identity``."""
    rng = np.random.default_rng([IDENTITY_DOMAIN, int(identity)])
    bg_top = _hsv(rng, (0.0, 0.6), (0.15, 0.95))
    bg_bottom = np.clip(bg_top + rng.uniform(-80, 80, 3), 0, 255)
    floor = np.clip(0.5 * (bg_top + bg_bottom) * rng.uniform(0.4, 0.8), 0, 255)
    skin_tones = np.array([[255, 219, 172], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36]], float)
    skin = np.clip(skin_tones[rng.integers(len(skin_tones))] + rng.uniform(-15, 15, 3), 0, 255)
    hair = _hsv(rng, (0.2, 0.9), (0.05, 0.6))
    background = np.stack([bg_top, bg_bottom, floor])
    shirt = _distinct(rng, np.concatenate([background, skin[None]]))
    shirt2 = _distinct(rng, np.stack([shirt]), min_dist=120.0)
    pants = _distinct(rng, np.concatenate([background, shirt[None]]))
    shoes = _hsv(rng, (0.0, 0.8), (0.05, 0.5))
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    lengths = dict(
            head=j(0.062, 0.075), neck=j(0.09, 0.11), torso=j(0.27, 0.32), shoulder=j(0.095, 0.125),
            hip=j(0.06, 0.08), upper_arm=j(0.14, 0.17), forearm=j(0.12, 0.15), palm=j(0.045, 0.055),
            thigh=j(0.2, 0.24), shin=j(0.19, 0.23), foot=j(0.05, 0.065),
    )
    build = j(0.8, 1.25)
    widths = dict(upper_arm=0.05 * build, forearm=0.04 * build, thigh=0.075 * build, shin=0.058 * build,
                  neck=0.045 * build, finger=0.008)
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    return Appearance(skin=skin, hair=hair, shirt=shirt, shirt2=shirt2, pants=pants, shoes=shoes, bg_top=bg_top,
                      bg_bottom=bg_bottom, floor=floor, pattern=pattern, pattern_count=int(rng.integers(3, 7)),
                      lengths=lengths, widths=widths)


def _wave(rng: np.random.Generator, t: np.ndarray, amp: float) -> np.ndarray:
    """Smooth zero-mean signal: two sinusoids, 0.03-0.09 cycles per frame, amplitude about ``amp``."""
    f1, f2 = rng.uniform(0.03, 0.09, 2)
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    return amp * (np.sin(2 * np.pi * f1 * t + p1) + 0.3 * np.sin(2 * np.pi * f2 * t + p2)) / 1.3


def make_motion(seed: int, num_frames: int, travel: float = 0.1) -> Dict[str, np.ndarray]:
    """Joint angles [rad], face/hand shape controls and global placement per frame (each ``[T]``).

    ``travel`` bounds the amplitude of the figure's sideways wandering (fraction of the frame width); the
    amplitude of each video is drawn from ``[0, travel)``.
    """
    rng = np.random.default_rng([MOTION_DOMAIN, int(seed)])
    t = np.arange(num_frames, dtype=np.float64)
    m: Dict[str, np.ndarray] = {}
    m["torso"] = rng.uniform(-0.08, 0.08) + _wave(rng, t, rng.uniform(0.0, 0.15))
    m["head_roll"] = _wave(rng, t, rng.uniform(0.0, 0.25))
    m["head_yaw"] = _wave(rng, t, rng.uniform(0.0, 0.3))
    m["mouth"] = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.02, 0.1) * t + rng.uniform(0, 6.3))
    for side, sign in (("l", 1.0), ("r", -1.0)):
        m[f"{side}_upper_arm"] = sign * (rng.uniform(0.15, 1.0) + _wave(rng, t, rng.uniform(0.2, 0.9)))
        bend = rng.uniform(0.0, 0.8) + _wave(rng, t, rng.uniform(0.1, 0.8))
        m[f"{side}_forearm"] = sign * np.clip(bend, -0.2, 2.0)
        m[f"{side}_thigh"] = sign * (rng.uniform(0.02, 0.15) + _wave(rng, t, rng.uniform(0.03, 0.3)))
        knee_f, knee_p = rng.uniform(0.03, 0.09), rng.uniform(0, 2 * np.pi)
        m[f"{side}_shin"] = -sign * rng.uniform(0.0, 0.4) * (0.5 + 0.5 * np.sin(2 * np.pi * knee_f * t + knee_p))
        m[f"{side}_wrist"] = _wave(rng, t, rng.uniform(0.0, 0.4))
        m[f"{side}_spread"] = 1.0 + _wave(rng, t, rng.uniform(0.0, 0.3))
        m[f"{side}_curl"] = np.clip(0.3 + _wave(rng, t, rng.uniform(0.0, 0.6)), 0.0, 0.9)
    m["size"] = np.full_like(t, rng.uniform(0.72, 0.9))  # figure height / frame height
    m["x"] = rng.uniform(0.38, 0.62) + _wave(rng, t, rng.uniform(0.0, travel))  # pelvis x / frame width
    m["bob"] = _wave(rng, t, rng.uniform(0.0, 0.015))  # vertical bounce / frame height
    return m


def _dir(a: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(a), np.cos(a)], axis=-1)


def _perp(a: np.ndarray) -> np.ndarray:
    """Unit vector to the figure's left (image right when a = 0)."""
    return np.stack([np.cos(a), -np.sin(a)], axis=-1)


def _face_template() -> np.ndarray:
    """68 iBUG-order face landmarks in head-radius units (x right, y down, origin head centre)."""
    pts = []
    for i in range(17):  # jaw, image left to image right through the chin
        phi = np.pi - np.pi * i / 16
        pts.append((0.78 * np.cos(phi), 0.1 + 0.82 * np.sin(phi)))
    for x0 in (-0.7, 0.15):  # eyebrows
        for i in range(5):
            x = x0 + 0.55 * i / 4
            pts.append((x, -0.45 - 0.08 * np.sin(np.pi * i / 4)))
    for i in range(4):  # nose bridge
        pts.append((0.0, -0.28 + 0.14 * i))
    for i in range(5):  # nose bottom
        pts.append((-0.18 + 0.09 * i, 0.2 + 0.03 * np.sin(np.pi * i / 4)))
    for cx in (-0.35, 0.35):  # eyes: 6 points around each
        for k in range(6):
            ang = np.pi + 2 * np.pi * k / 6
            pts.append((cx + 0.16 * np.cos(ang), -0.2 + 0.06 * np.sin(ang)))
    for k in range(12):  # outer lip, closed-mouth shape; opening added per frame
        ang = np.pi + 2 * np.pi * k / 12
        pts.append((0.33 * np.cos(ang), 0.52 + 0.1 * np.sin(ang)))
    for k in range(8):  # inner lip
        ang = np.pi + 2 * np.pi * k / 8
        pts.append((0.2 * np.cos(ang), 0.52 + 0.03 * np.sin(ang)))
    return np.array(pts)


_FACE = _face_template()
_MOUTH = np.zeros(68, bool)
_MOUTH[48:] = True


def _hand(wrist: np.ndarray, axis_angle: np.ndarray, thumb_sign: float, palm: np.ndarray, spread: np.ndarray,
          curl: np.ndarray) -> np.ndarray:
    """21 hand points ``[T, 21, 2]`` from the wrist, hand axis angle, palm length ``[T, 1]`` and finger controls."""
    along, side = _dir(axis_angle), thumb_sign * _perp(axis_angle)
    pts = [wrist]
    for ang, knuckle, length in _FINGERS:
        phi = (ang * spread)[:, None]
        d = np.cos(phi) * along + np.sin(phi) * side
        p = wrist + knuckle * palm * d
        pts.append(p)
        bend = (1.0 - 0.6 * curl)[:, None]
        d2 = np.cos(1.2 * phi) * along + np.sin(1.2 * phi) * side
        for seg in _PHALANX[: 3]:
            p = p + seg * length * palm * bend * d2
            pts.append(p)
    return np.stack(pts, axis=1)


def figure_keypoints(app: Appearance, motion: Dict[str, np.ndarray], height: int,
                     width: int) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Places the figure in a ``height`` x ``width`` frame.

    Returns:
        ``(kp, extra)``: float32 ``[T, 133, 3]`` keypoints (score 1 inside the frame, 0 outside) and a
        dict of ``[T, 2]`` points / ``[T]`` values the renderer needs (neck, pelvis, head centre, ...).
    """
    L = app.lengths
    scale = motion["size"] * height  # pixels per figure-height unit
    s = scale[:, None]
    below = L["thigh"] + L["shin"] + 0.6 * L["foot"]
    pelvis = np.stack([motion["x"] * width, height * (0.97 + motion["bob"]) - below * scale], axis=-1)
    a_t = motion["torso"]
    neck = pelvis - L["torso"] * s * _dir(a_t)
    perp = _perp(a_t)
    kp = np.zeros((len(a_t), kpl.NUM_KEYPOINTS, 2))
    sh = {"l": neck + L["shoulder"] * s * perp, "r": neck - L["shoulder"] * s * perp}
    hip = {"l": pelvis + L["hip"] * s * perp, "r": pelvis - L["hip"] * s * perp}
    a_h = a_t + motion["head_roll"]
    head = neck - L["neck"] * s * _dir(a_h)
    r = L["head"] * s
    face = _FACE[None].repeat(len(a_t), 0)
    face[:, :, 0] += motion["head_yaw"][:, None] * 0.5
    face[:, _MOUTH, 1] += (face[:, _MOUTH, 1] - 0.52) * 2.0 * motion["mouth"][:, None]
    to_img = lambda loc: head[:, None] + r[:, None] * (  # noqa: E731
        loc[..., :1] * _perp(a_h)[:, None] + loc[..., 1:] * _dir(a_h)[:, None])
    kp[:, kpl.FACE] = to_img(face)
    # nose, left eye, right eye, left ear, right ear (the figure's left is image right)
    head_pts = np.array([(0.0, 0.15), (0.35, -0.2), (-0.35, -0.2), (0.95, 0.0), (-0.95, 0.0)])
    head_pts = head_pts[None].repeat(len(a_t), 0)
    head_pts[..., 0] += 0.5 * motion["head_yaw"][:, None]
    kp[:, 0:5] = to_img(head_pts)
    extra = {"neck": neck, "pelvis": pelvis, "head": head, "head_radius": r[:, 0], "head_angle": a_h,
             "torso_angle": a_t, "scale": scale}
    for side, sign, k0 in (("l", 1.0, 0), ("r", -1.0, 1)):
        a_ua = a_t + motion[f"{side}_upper_arm"]
        elbow = sh[side] + L["upper_arm"] * s * _dir(a_ua)
        a_fa = a_ua + motion[f"{side}_forearm"]
        wrist = elbow + L["forearm"] * s * _dir(a_fa)
        a_th = a_t * 0.3 + motion[f"{side}_thigh"]
        knee = hip[side] + L["thigh"] * s * _dir(a_th)
        ankle = knee + L["shin"] * s * _dir(a_th + motion[f"{side}_shin"])
        joints = np.stack([sh[side], elbow, wrist, hip[side], knee, ankle], 1)
        kp[:, [5 + k0, 7 + k0, 9 + k0, 11 + k0, 13 + k0, 15 + k0]] = joints
        f = L["foot"] * s
        # big toe (inwards), small toe (outwards), heel; toes point at the camera, so they sit below the ankle
        toe_offsets = np.array([(-0.25 * sign, 0.8), (0.4 * sign, 0.7), (0.05 * sign, 0.3)])
        feet = ankle[:, None] + f[:, None] * toe_offsets[None]
        kp[:, 17 + 3 * k0: 20 + 3 * k0] = feet
        hand = _hand(wrist, a_fa + motion[f"{side}_wrist"], sign, L["palm"] * scale[:, None],
                     motion[f"{side}_spread"], motion[f"{side}_curl"])
        kp[:, kpl.LEFT_HAND if side == "l" else kpl.RIGHT_HAND] = hand
        extra[f"{side}_hand_angle"] = a_fa + motion[f"{side}_wrist"]
    inside = (kp[..., 0] >= 0) & (kp[..., 0] <= width - 1) & (kp[..., 1] >= 0) & (kp[..., 1] <= height - 1)
    out = np.concatenate([kp, inside[..., None].astype(np.float64)], -1).astype(np.float32)
    return out, extra
