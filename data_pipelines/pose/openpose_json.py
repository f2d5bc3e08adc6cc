"""Conversion between COCO-WholeBody ``[133, 3]`` keypoints and OpenPose JSON (BODY_25 + face + hands).

VITON-HD ships ``openpose_json/<name>_keypoints.json`` files in OpenPose's format. Their
``pose_keypoints_2d`` is BODY_25 (flat ``[x, y, c] * 25``); ``face_keypoints_2d`` has 70 points (the
68 iBUG landmarks, then 2 pupils) and each ``hand_*_keypoints_2d`` 21 points in the same order as
COCO-WholeBody's hands. Missing parts (empty lists) become zero-score points.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from humandiff import media
from humandiff.data import keypoints as kpl

# BODY_25 index -> COCO-WholeBody index (-1: BODY_25's neck and mid-hip, derived, not stored in COCO).
BODY25_TO_COCO = (0, -1, 6, 8, 10, 5, 7, 9, -1, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 17, 18, 19, 20, 21, 22)


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([(a[0] + b[0]) / 2, (a[1] + b[1]) / 2, min(a[2], b[2])], np.float32)


def to_openpose_json(keypoints: np.ndarray) -> Dict[str, Any]:
    """One frame ``[133, 3]`` -> an OpenPose JSON document with one person."""
    kp = media.validate_keypoints(keypoints, video=False, source="to_openpose_json keypoints")
    body = np.zeros((25, 3), np.float32)
    for i, c in enumerate(BODY25_TO_COCO):
        if c >= 0:
            body[i] = kp[c]
    body[1] = _midpoint(kp[kpl.LEFT_SHOULDER], kp[kpl.RIGHT_SHOULDER])
    body[8] = _midpoint(kp[kpl.LEFT_HIP], kp[kpl.RIGHT_HIP])
    face = kp[kpl.FACE]
    pupils = np.stack([face[36:42].mean(0), face[42:48].mean(0)])
    flat = lambda a: [float(v) for v in np.asarray(a, np.float64).reshape(-1)]  # noqa: E731
    person = {
        "person_id": [-1],
        "pose_keypoints_2d": flat(body),
        "face_keypoints_2d": flat(np.concatenate([face, pupils])),
        "hand_left_keypoints_2d": flat(kp[kpl.LEFT_HAND]),
        "hand_right_keypoints_2d": flat(kp[kpl.RIGHT_HAND]),
        "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [], "hand_right_keypoints_3d": [],
    }
    return {"version": 1.3, "people": [person]}


def _points(person: Dict[str, Any], key: str, count: int, source: str) -> np.ndarray:
    vals = person.get(key) or []
    arr = np.asarray(vals, np.float32)
    if arr.size == 0:
        return np.zeros((count, 3), np.float32)
    if arr.ndim != 1 or arr.size % 3 or arr.size // 3 < count:
        raise ValueError(f"{source}: {key} must hold at least {count} (x, y, c) triples, got {arr.size} numbers")
    return arr.reshape(-1, 3)[:count]


def from_openpose_json(doc: Dict[str, Any], *, source: str = "openpose json") -> np.ndarray:
    """An OpenPose JSON document -> ``[133, 3]`` for its highest-scoring person (zeros if nobody).

    Accepts BODY_25 (75 numbers) or COCO-18 (54 numbers) ``pose_keypoints_2d``.
    """
    people = doc.get("people")
    if not isinstance(people, list):
        raise ValueError(f"{source}: no 'people' list in OpenPose JSON")
    out = np.zeros((kpl.NUM_KEYPOINTS, 3), np.float32)
    if not people:
        return out
    scores = [float(np.sum(np.asarray(p.get("pose_keypoints_2d") or [0.0], np.float32)[2::3])) for p in people]
    person = people[int(np.argmax(scores))]
    n_body = len(person.get("pose_keypoints_2d") or []) // 3
    if n_body == 18:  # COCO-18 / OpenPose-18 order
        body = _points(person, "pose_keypoints_2d", 18, source)
        for op_i, c in enumerate(kpl.OPENPOSE18_FROM_COCO):
            if c >= 0:
                out[c] = body[op_i]
    else:
        body = _points(person, "pose_keypoints_2d", 25, source)
        for i, c in enumerate(BODY25_TO_COCO):
            if c >= 0:
                out[c] = body[i]
    out[kpl.FACE] = _points(person, "face_keypoints_2d", 68, source)
    out[kpl.LEFT_HAND] = _points(person, "hand_left_keypoints_2d", 21, source)
    out[kpl.RIGHT_HAND] = _points(person, "hand_right_keypoints_2d", 21, source)
    return out
