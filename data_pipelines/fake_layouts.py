"""Writers of raw dataset folders in each public dataset's layout, filled with synthetic videos.

They exist so that the dataset builders can be tested end to end without the real data. Every
writer is deterministic in ``seed`` and returns the folder a builder's ``--manual_dir`` points at.
Poses: next to every video (or frame folder, or try-on person image) lies ``<same stem>.npy`` with
the synthetic figure's COCO-WholeBody keypoints, float32 ``[T, 133, 3]`` (``[133, 3]`` for a still
image), exactly where `humandiff.data.keypoints.pose_path_for` says a pose file belongs. Files are written
with `humandiff.media`.

Layouts written (``root`` is the argument):

* TikTok (Jafarian & Park's TikTok dataset): ``root/TikTok_dataset/00001/images/0001.png`` (RGB frames,
  numbered from 1) and ``.../masks/0001.png`` (8-bit person masks, 0 or 255); poses
  ``root/TikTok_dataset/00001.npy``. Returns ``root/TikTok_dataset``.
* UBC-Fashion (the UBC fashion video release): ``root/fashion_train.txt`` and ``root/fashion_test.txt``
  (one video URL per line, ``https://m.media-amazon.com/images/I/<name>.mp4``), videos
  ``root/train/<name>.mp4`` and ``root/test/<name>.mp4``; poses ``root/{train,test}/<name>.npy``.
* A folder of own videos: ``root/<name>.mp4`` with ``root/<name>.npy``.
* VITON-HD: ``root/train_pairs.txt`` / ``root/test_pairs.txt`` (``<person>.jpg <cloth>.jpg`` per line;
  test pairs are unpaired: a different person's cloth), and under ``root/{train,test}/``: ``image/`` (person
  JPEG), ``cloth/`` (garment on white, JPEG), ``cloth-mask/`` (JPEG, 0/255), ``agnostic-mask/<name>_mask.png``
  (0/255, 255 = region to generate), ``agnostic-v3.2/`` (person with the region greyed out, JPEG),
  ``openpose_json/<name>_keypoints.json`` (OpenPose BODY_25 + face + hands); poses ``image/<name>.npy``.

Videos are H.264 mp4 (`humandiff.media.write_mp4`, preset ultrafast; yuv420p, so height and width must be even).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, List, Optional

import cv2
import numpy as np

from data_pipelines.pose.openpose_json import to_openpose_json
from humandiff import media
from humandiff.data import keypoints as kpl
from humandiff.data import synthetic
from humandiff.data.synthetic_figure import make_appearance

UBC_URL_PREFIX = "https://m.media-amazon.com/images/I/"


def _videos(num: int, num_frames: int, height: int, width: int, seed: int, split: str = "train"):
    return synthetic.SyntheticSource(num, num_frames, height, width, seed, split=split)


def person_masks(video: dict, identity: int) -> np.ndarray:
    """uint8 ``[T, H, W]`` masks (255 where the figure is) of a synthetic video of ``identity``."""
    frames = video["frames"]
    bg = synthetic.background(make_appearance(identity), frames.shape[1], frames.shape[2])
    return np.where(np.any(frames != bg[None], axis=-1), 255, 0).astype(np.uint8)


def write_tiktok(root: str, num_videos: int = 3, num_frames: int = 8, height: int = 64, width: int = 48,
                 seed: int = 0) -> str:
    """TikTok dataset layout (see module docstring). Returns ``root/TikTok_dataset``."""
    base = os.path.join(root, "TikTok_dataset")
    src = _videos(num_videos, num_frames, height, width, seed)
    for i in range(num_videos):
        video = src[i]
        folder = os.path.join(base, f"{i + 1:05d}")
        os.makedirs(os.path.join(folder, "images"), exist_ok=True)
        os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
        masks = person_masks(video, src.identity(i))
        for t in range(num_frames):
            media.write_image(os.path.join(folder, "images", f"{t + 1:04d}.png"), video["frames"][t])
            media.write_image(os.path.join(folder, "masks", f"{t + 1:04d}.png"), masks[t])
        media.save_keypoints(kpl.pose_path_for(folder), video["keypoints"])
    return base


def _ubc_name(rng: np.random.Generator) -> str:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return "9" + "".join(rng.choice(alphabet, 9)) + "S"


def write_ubc_fashion(root: str, num_train: int = 3, num_test: int = 2, num_frames: int = 8, height: int = 64,
                      width: int = 48, seed: int = 0) -> str:
    """UBC-Fashion layout (see module docstring). Returns ``root``."""
    rng = np.random.default_rng([0xFA, seed])
    for split, count in (("train", num_train), ("test", num_test)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        src = _videos(count, num_frames, height, width, seed, split)
        urls = []
        for i in range(count):
            name = _ubc_name(rng)
            video = src[i]
            path = os.path.join(root, split, name + ".mp4")
            media.write_mp4(path, video["frames"], video["fps"], preset="ultrafast")
            media.save_keypoints(kpl.pose_path_for(path), video["keypoints"])
            urls.append(UBC_URL_PREFIX + name + ".mp4")
        with open(os.path.join(root, f"fashion_{split}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(u + "\n" for u in urls))
    return root


def write_video_folder(root: str, num_videos: int = 3, num_frames: int = 8, height: int = 64, width: int = 48,
                       seed: int = 0, names: Optional[Iterable[str]] = None) -> str:
    """A flat folder of ``<name>.mp4`` + ``<name>.npy``. Returns ``root``."""
    os.makedirs(root, exist_ok=True)
    names = list(names) if names is not None else [f"dance_{i:04d}" for i in range(num_videos)]
    src = _videos(len(names), num_frames, height, width, seed)
    for i, name in enumerate(names):
        video = src[i]
        path = os.path.join(root, name + ".mp4")
        media.write_mp4(path, video["frames"], video["fps"], preset="ultrafast")
        media.save_keypoints(kpl.pose_path_for(path), video["keypoints"])
    return root


def _garment(identity: int, height: int, width: int) -> tuple:
    """A flat front view of the identity's shirt on white, and its 0/255 mask."""
    app = make_appearance(identity)
    tile = synthetic.texture_tile(app)  # the same pattern as on the figure's torso
    x0, x1, y0, y1 = int(0.3 * width), int(0.7 * width), int(0.2 * height), int(0.8 * height)
    t = tile.shape[0]
    # tile covers u in [-1.5, 1.5], v in [-0.25, 1.25]: the torso (u in [-1, 1], v in [0, 1]) is its middle
    body = tile[int(t * 0.25 / 1.5): int(t * 1.25 / 1.5), int(t * 0.5 / 3): int(t * 2.5 / 3)]
    img = np.full((height, width, 3), 255, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    img[y0:y1, x0:x1] = cv2.resize(body, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    mask[y0:y1, x0:x1] = 255
    sleeve = max(1, int(0.08 * width))
    for xa, xb in ((x0, int(0.12 * width)), (x1, int(0.88 * width))):
        for canvas, color in ((img, tuple(float(c) for c in app.shirt)), (mask, 255.0)):
            cv2.line(canvas, (xa, y0 + sleeve), (xb, int(0.5 * height)), color, sleeve)
    return img, mask


def _agnostic_mask(kp: np.ndarray, height: int, width: int) -> np.ndarray:
    """0/255 mask over the upper body (torso and arms) from the keypoints: the try-on region."""
    mask = np.zeros((height, width), np.uint8)
    pts = kp[[kpl.LEFT_SHOULDER, kpl.RIGHT_SHOULDER, kpl.RIGHT_HIP, kpl.LEFT_HIP], :2]
    cv2.fillConvexPoly(mask, np.rint(pts).astype(np.int32), 255)
    thick = max(2, int(0.1 * min(height, width)))
    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (11, 12), (5, 11), (6, 12)):
        cv2.line(mask, tuple(np.rint(kp[a, :2]).astype(int).tolist()), tuple(np.rint(kp[b, :2]).astype(int).tolist()),
                 255, thick)
    return mask


def write_viton_hd(root: str, num_train: int = 3, num_test: int = 2, height: int = 64, width: int = 48,
                   seed: int = 0) -> str:
    """VITON-HD layout (see module docstring). Returns ``root``."""
    for split, count in (("train", num_train), ("test", num_test)):
        d = {k: os.path.join(root, split, k) for k in ("image", "cloth", "cloth-mask", "agnostic-mask",
                                                        "agnostic-v3.2", "openpose_json")}
        for path in d.values():
            os.makedirs(path, exist_ok=True)
        src = _videos(count, 1, height, width, seed, split)
        names: List[str] = []
        for i in range(count):
            name = f"{i:05d}_00"
            names.append(name)
            video = src[i]
            person, kp = video["frames"][0], video["keypoints"][0]
            media.write_image(os.path.join(d["image"], name + ".jpg"), person, quality=95)
            media.save_keypoints(os.path.join(d["image"], name + ".npy"), kp)
            cloth, cloth_mask = _garment(src.identity(i), height, width)
            media.write_image(os.path.join(d["cloth"], name + ".jpg"), cloth, quality=95)
            media.write_image(os.path.join(d["cloth-mask"], name + ".jpg"), cloth_mask, quality=95)
            agn = _agnostic_mask(kp, height, width)
            media.write_image(os.path.join(d["agnostic-mask"], name + "_mask.png"), agn)
            grey = np.where(agn[..., None] > 0, 128, person).astype(np.uint8)
            media.write_image(os.path.join(d["agnostic-v3.2"], name + ".jpg"), grey, quality=95)
            with open(os.path.join(d["openpose_json"], name + "_keypoints.json"), "w", encoding="utf-8") as f:
                json.dump(to_openpose_json(kp), f)
        # train pairs are paired (own cloth); test pairs are unpaired (the next person's cloth)
        shift = 0 if split == "train" else 1
        lines = [f"{n}.jpg {names[(i + shift) % len(names)]}.jpg\n" for i, n in enumerate(names)]
        with open(os.path.join(root, f"{split}_pairs.txt"), "w", encoding="utf-8") as f:
            f.write("".join(lines))
    return root
