"""The embedded default dataset: procedural videos of articulated, human-like figures.

Each video shows one figure (an *identity*: skin/hair/clothes colours, a torso pattern, body
proportions, a background) moving with smooth random joint motions (a *motion seed*), together
with its whole-body keypoints in the COCO-WholeBody 133-point layout that DWPose outputs. The task
is learnable by construction: a frame's appearance follows from the identity alone, visible in any
reference frame of the same video, and its pose follows from the skeleton alone.

`make_video` builds one video; `SyntheticSource` is a random-access source (``len`` / ``[i]``) of
such records for grain or any loader, with disjoint identities for ``split="train"`` and ``"test"``.
Everything is deterministic in the seeds (numpy ``SeedSequence`` streams, OpenCV drawing).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import cv2
import numpy as np

from humandiff.data import keypoints as kpl
from humandiff.data.synthetic_figure import Appearance, figure_keypoints, make_appearance, make_motion

FPS = 8.0  # nominal frame rate of synthetic videos
SPLITS = ("train", "test")
SOURCE_DOMAIN = 0x5C

_SHIFT = 4
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA


def _thick(width_units: float, scale: float) -> int:
    return int(max(1, round(width_units * scale)))


# Finger polylines within a 21-point hand: the thumb from the wrist, other fingers from their knuckle
# (the palm disc covers the rest).
_FINGER_LINES = [np.array([0, 1, 2, 3, 4])] + [np.arange(1 + 4 * f, 5 + 4 * f) for f in range(1, 5)]
_FINGER_ALL = np.concatenate(_FINGER_LINES)
_FINGER_SPLITS = np.cumsum([len(f) for f in _FINGER_LINES])[:-1]


class _Style:
    """Per-video drawing constants: OpenCV colour tuples and line thicknesses in pixels."""

    def __init__(self, app: Appearance, scale: float):
        col = lambda c: tuple(float(v) for v in c)  # noqa: E731
        self.app = app
        self.skin, self.hair, self.shirt = col(app.skin), col(app.hair), col(app.shirt)
        self.pants, self.shoes = col(app.pants), col(app.shoes)
        w = app.widths
        self.thigh, self.shin = _thick(w["thigh"], scale), _thick(w["shin"], scale)
        self.shoe, self.neck = _thick(0.8 * w["shin"], scale), _thick(w["neck"], scale)
        self.upper_arm, self.forearm = _thick(w["upper_arm"], scale), _thick(w["forearm"], scale)
        self.finger = _thick(w["finger"], scale)
        self.pad = 0.5 * w["upper_arm"] * scale
        self.tile = texture_tile(app)


# The torso texture tile spans u in [-1.5, 1.5] (shoulder half-widths, figure's right to left) and
# v in [-0.25, 1.25] (neck to pelvis) over _TILE x _TILE pixels.
_TILE = 96
_TILE_U0, _TILE_DU = -1.5, 3.0 / _TILE
_TILE_V0, _TILE_DV = -0.25, 1.5 / _TILE


def texture_tile(app: Appearance) -> np.ndarray:
    """The identity's torso pattern in torso coordinates, uint8 ``[_TILE, _TILE, 3]``."""
    c = np.arange(_TILE) + 0.5
    n = app.pattern_count
    u = np.floor(((_TILE_U0 + c * _TILE_DU) + 1.0) * n / 2).astype(int)[None, :] & 1
    v = np.floor((_TILE_V0 + c * _TILE_DV) * n).astype(int)[:, None] & 1
    alt = {"solid": 0 * (u + v), "hstripes": v + 0 * u, "vstripes": u + 0 * v, "checks": u ^ v}[app.pattern]
    return np.where(alt[..., None].astype(bool), app.shirt2, app.shirt).astype(np.uint8)


def background(app: Appearance, height: int, width: int) -> np.ndarray:
    """Vertical gradient from ``bg_top`` to ``bg_bottom`` with a floor band; uint8 ``[H, W, 3]``."""
    y = np.linspace(0.0, 1.0, height)[:, None]
    rows = app.bg_top[None] * (1.0 - y) + app.bg_bottom[None] * y
    rows[int(0.9 * height):] = app.floor
    return np.broadcast_to(np.rint(rows)[:, None, :], (height, width, 3)).astype(np.uint8)


def _torso(canvas: np.ndarray, kp: np.ndarray, ex: Dict[str, Any], st: _Style) -> None:
    """Torso quadrilateral (shoulders to hips), filled with the identity's pattern in torso coordinates."""
    app = st.app
    down = np.array([np.sin(ex["torso_angle"]), np.cos(ex["torso_angle"])])
    left = np.array([down[1], -down[0]])
    pad = st.pad
    quad = np.stack([kp[5] + pad * left - 0.3 * pad * down, kp[6] - pad * left - 0.3 * pad * down,
                     kp[12] - 0.4 * pad * left, kp[11] + 0.4 * pad * left])
    if app.pattern == "solid":
        cv2.fillConvexPoly(canvas, np.rint(quad * _ONE).astype(np.int32), st.shirt, _AA, _SHIFT)
        return
    h, w = canvas.shape[:2]
    x0, y0 = np.clip(np.floor(quad.min(0)).astype(int), 0, [w, h])
    x1, y1 = np.clip(np.ceil(quad.max(0)).astype(int) + 1, 0, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillConvexPoly(mask, np.rint((quad - [x0, y0]) * _ONE).astype(np.int32), 1, cv2.LINE_8, _SHIFT)
    hw = float(np.hypot(*(kp[5] - kp[6]))) / 2 + 1e-6
    length = float(np.hypot(*(ex["pelvis"] - ex["neck"]))) + 1e-6
    # Affine map from texture-tile pixels (u, v grid, see _Style.tile) to bbox pixels.
    a = np.stack([left * hw * _TILE_DU, down * length * _TILE_DV,
                  ex["neck"] + left * hw * (_TILE_U0 + 0.5 * _TILE_DU) + down * length * (_TILE_V0 + 0.5 * _TILE_DV)
                  - [x0, y0]], axis=1)
    tex = cv2.warpAffine(st.tile, a, (x1 - x0, y1 - y0), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_REPLICATE)
    np.copyto(canvas[y0:y1, x0:x1], tex, where=mask.view(bool)[..., None])


def _head(canvas: np.ndarray, fx: list, ex: Dict[str, Any], st: _Style) -> None:
    r = float(ex["head_radius"])
    down = np.array([np.sin(ex["head_angle"]), np.cos(ex["head_angle"])])
    center = tuple(np.rint(ex["head"] * _ONE).astype(int).tolist())
    cv2.circle(canvas, center, int(round(r * _ONE)), st.skin, -1, _AA, _SHIFT)
    hair_center = tuple(np.rint((ex["head"] - 0.3 * r * down) * _ONE).astype(int).tolist())
    axes = (int(round(r * _ONE)), int(round(0.75 * r * _ONE)))
    cv2.ellipse(canvas, hair_center, axes, -np.degrees(float(ex["head_angle"])), 180, 360, st.hair, -1, _AA, _SHIFT)
    eye_r = int(round(max(0.6, 0.14 * r) * _ONE))
    for eye in (fx[1], fx[2]):
        cv2.circle(canvas, eye, eye_r, (20.0, 20.0, 30.0), -1, _AA, _SHIFT)
    cv2.line(canvas, fx[23 + 48], fx[23 + 54], (120.0, 30.0, 40.0), 1, _AA, _SHIFT)


def _hand(canvas: np.ndarray, hand: np.ndarray, hand_fx: np.ndarray, st: _Style) -> None:
    palm_len = float(np.hypot(*(hand[9] - hand[0])))
    center = tuple(((hand_fx[0] + hand_fx[9]) // 2).tolist())
    cv2.circle(canvas, center, int(round(0.5 * palm_len * _ONE)), st.skin, -1, _AA, _SHIFT)
    cv2.polylines(canvas, np.split(hand_fx[_FINGER_ALL], _FINGER_SPLITS), False, st.skin, st.finger, _AA, _SHIFT)


def render_frame(st: _Style, kp: np.ndarray, fx: np.ndarray, ex: Dict[str, Any], bg: np.ndarray) -> np.ndarray:
    """Draws one frame back to front: legs, shoes, torso, neck, head, arms, hands.

    Args:
      st: the video's drawing constants.
      kp: float ``[133, 2]`` keypoints in pixels.
      fx: the same in OpenCV fixed point (int32, ``_SHIFT`` fractional bits).
      ex: the frame's extra joints from `figure_keypoints`.
      bg: uint8 ``[H, W, 3]`` background.

    Returns:
      uint8 ``[H, W, 3]``.
    """
    canvas = bg.copy()
    p = [tuple(q) for q in fx.tolist()]
    for k in (0, 1):  # left (image right), right
        cv2.line(canvas, p[11 + k], p[13 + k], st.pants, st.thigh, _AA, _SHIFT)
        cv2.line(canvas, p[13 + k], p[15 + k], st.pants, st.shin, _AA, _SHIFT)
        toes = tuple(((fx[17 + 3 * k] + fx[18 + 3 * k]) // 2).tolist())
        cv2.line(canvas, p[15 + k], toes, st.shoes, st.shoe, _AA, _SHIFT)
    _torso(canvas, kp, ex, st)
    neck = tuple(np.rint(ex["neck"] * _ONE).astype(int).tolist())
    cv2.line(canvas, neck, tuple(np.rint(ex["head"] * _ONE).astype(int).tolist()), st.skin, st.neck, _AA, _SHIFT)
    _head(canvas, p, ex, st)
    for k, hand in ((0, kpl.LEFT_HAND), (1, kpl.RIGHT_HAND)):
        cv2.line(canvas, p[5 + k], p[7 + k], st.shirt, st.upper_arm, _AA, _SHIFT)
        cv2.line(canvas, p[7 + k], p[9 + k], st.skin, st.forearm, _AA, _SHIFT)
        _hand(canvas, kp[hand], fx[hand], st)
    return canvas


MAX_TRAVEL = 0.5  # a figure wanders at most half the frame width sideways


def check_travel(travel: float, where: str) -> None:
    """Raises ValueError naming `where` unless 0 <= travel <= MAX_TRAVEL."""
    if not 0.0 <= travel <= MAX_TRAVEL:
        raise ValueError(f"{where}: travel must be in [0, {MAX_TRAVEL}] (a fraction of the width), got {travel}")


def make_video(seed: int, num_frames: int, height: int, width: int, *, identity: Optional[int] = None,
               video_id: Optional[str] = None, travel: float = 0.1) -> Dict[str, Any]:
    """Generates one synthetic video.

    Args:
      seed: motion seed (joint-angle trajectories, placement, size).
      num_frames: number of frames T (>= 1).
      height: frame height in pixels (>= 16).
      width: frame width in pixels (>= 16).
      identity: appearance seed; defaults to ``seed``.
      video_id: name of the record; defaults to ``"synthetic-id<identity>-m<seed>"``.
      travel: largest amplitude of the figure's sideways wandering, a fraction of the width (see `make_motion`).

    Returns:
      ``{"video_id": str, "frames": uint8 [T, H, W, 3], "keypoints": float32 [T, 133, 3], "fps": float}``.
      Keypoints are in pixels of the frame; score 1 for points inside the frame, 0 outside.
    """
    check_travel(travel, "make_video")
    if num_frames < 1 or height < 16 or width < 16:
        raise ValueError(f"make_video: need num_frames >= 1 and a frame of at least 16x16, "
                         f"got num_frames={num_frames}, {height}x{width}")
    identity = int(seed if identity is None else identity)
    app = make_appearance(identity)
    kp, extra = figure_keypoints(app, make_motion(int(seed), num_frames, travel), height, width)
    bg = background(app, height, width)
    style = _Style(app, float(extra["scale"][0]))
    xy = kp[..., :2].astype(np.float64)
    fx = np.rint(xy * _ONE).astype(np.int32)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t] = render_frame(style, xy[t], fx[t], {k: v[t] for k, v in extra.items()}, bg)
    return {"video_id": video_id or f"synthetic-id{identity}-m{int(seed)}", "frames": frames, "keypoints": kp,
            "fps": FPS}


class SyntheticSource:
    """Random-access source of synthetic videos (``len`` and ``[i]``), usable as a grain data source.

    Identities of the ``"train"`` and ``"test"`` splits never overlap (even vs. odd identity seeds), so
    the test split measures generalisation to unseen appearances. With ``num_identities`` set, video
    ``i`` shows identity ``i % num_identities`` of its split, each time with a different motion.
    """

    def __init__(self, num_videos: int, num_frames: int, height: int, width: int, seed: int = 0, *,
                 split: str = "train", num_identities: Optional[int] = None, travel: float = 0.1):
        if split not in SPLITS:
            raise ValueError(f"SyntheticSource: split must be one of {SPLITS}, got {split!r}")
        if num_videos < 1:
            raise ValueError(f"SyntheticSource: num_videos must be >= 1, got {num_videos}")
        if num_identities is not None and num_identities < 1:
            raise ValueError(f"SyntheticSource: num_identities must be >= 1, got {num_identities}")
        self.num_videos, self.num_frames, self.height, self.width = num_videos, num_frames, height, width
        check_travel(travel, "SyntheticSource")
        self.seed, self.split, self.num_identities, self.travel = int(seed), split, num_identities, float(travel)

    def __len__(self) -> int:
        return self.num_videos

    def identity(self, index: int) -> int:
        """The appearance seed of video ``index`` (even for train, odd for test)."""
        k = index if self.num_identities is None else index % self.num_identities
        return 2 * (self.seed * 1_000_003 + k) + SPLITS.index(self.split)

    def motion_seed(self, index: int) -> int:
        """The motion seed of video ``index``."""
        ss = np.random.SeedSequence([SOURCE_DOMAIN, self.seed, SPLITS.index(self.split), index])
        return int(ss.generate_state(1)[0])

    def __getitem__(self, index: int) -> Dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_videos:
            raise IndexError(f"SyntheticSource index {index} out of range [0, {self.num_videos})")
        return make_video(self.motion_seed(index), self.num_frames, self.height, self.width,
                          identity=self.identity(index), video_id=f"synthetic-{self.split}-{self.seed}-{index:06d}",
                          travel=self.travel)

    def __repr__(self) -> str:
        return (f"SyntheticSource(num_videos={self.num_videos}, num_frames={self.num_frames}, height={self.height}, "
                f"width={self.width}, seed={self.seed}, split={self.split!r}, num_identities={self.num_identities}, "
                f"travel={self.travel})")
