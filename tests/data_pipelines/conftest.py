"""Fixtures: tiny raw folders in each real dataset's layout, with colour-coded frames.

Frame t of video v is a flat colour (R, G, B) = (40 + 40 v, 10 + 20 t, 128) with a 2x2 white dot at
keypoint 0, so tests can tell which video and frame a loaded image came from.
"""

import os
import types

import av
import numpy as np
import pytest
from PIL import Image

H, W, T = 24, 32, 6


def frames_for(v: int, t: int = T, h: int = H, w: int = W) -> np.ndarray:
    f = np.zeros((t, h, w, 3), np.uint8)
    f[..., 0] = 40 + 40 * v
    f[..., 1] = (10 + 20 * np.arange(t))[:, None, None]
    f[..., 2] = 128
    return f


def keypoints_for(v: int, t: int = T, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(v)
    xy = rng.uniform([2, 2], [w - 3, h - 3], (t, 133, 2))
    return np.concatenate([xy, rng.uniform(0.5, 1.0, (t, 133, 1))], -1).astype(np.float32)


def write_mp4(path: str, frames: np.ndarray, fps: int = 8, faststart: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w", options={"movflags": "faststart"} if faststart else None) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_ubc(root: str, n_train: int = 3, n_test: int = 1, lists: bool = True) -> str:
    names = {"train": [f"91-{i:04d}" for i in range(n_train)], "test": [f"A1-{i:04d}" for i in range(n_test)]}
    v = 0
    for split, ids in names.items():
        for name in ids:
            write_mp4(f"{root}/{split}/{name}.mp4", frames_for(v))
            np.save(f"{root}/{split}/{name}.npy", keypoints_for(v))
            v += 1
        if lists:
            with open(f"{root}/fashion_{split}.txt", "w") as f:
                f.writelines(f"https://example.com/fashion/{n}.mp4\n" for n in ids)
    return root


def make_tiktok(root: str, n: int = 3, modes: tuple = ()) -> str:
    """`modes[i]` (PIL mode, e.g. "RGBA" or "L") is the colour mode of video i's PNGs."""
    for v in range(n):
        vid = f"{v + 1:05d}"
        mode = modes[v] if v < len(modes) else "RGB"
        os.makedirs(f"{root}/{vid}/images", exist_ok=True)
        for t, f in enumerate(frames_for(v)):
            Image.fromarray(f).convert(mode).save(f"{root}/{vid}/images/{t + 1:04d}.png")
        np.save(f"{root}/{vid}.npy", keypoints_for(v))
    return root


def make_video_folder(root: str, n: int = 3) -> str:
    for v in range(n):
        sub = "dancer_a" if v % 2 else "dancer_b/take1"
        write_mp4(f"{root}/{sub}/clip{v}.mp4", frames_for(v))
        np.save(f"{root}/{sub}/clip{v}.npy", keypoints_for(v))
    with open(f"{root}/test.txt", "w") as f:
        f.write("dancer_a/clip1.mp4\n")
    return root


def make_viton(root: str, n_train: int = 2, n_test: int = 2, size=(32, 24)) -> str:
    h, w = size
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_test)):
        ids = [f"{i:05d}_00" for i in range(n)]
        for d in ("image", "cloth", "cloth-mask", "agnostic-mask"):
            os.makedirs(f"{root}/{part}/{d}", exist_ok=True)
        for i, pid in enumerate(ids):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(f"{root}/{part}/image/{pid}.jpg")
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(f"{root}/{part}/cloth/{pid}.jpg")
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
            Image.fromarray(mask).save(f"{root}/{part}/cloth-mask/{pid}.jpg")
            Image.fromarray(mask).save(f"{root}/{part}/agnostic-mask/{pid}_mask.png")
            if i == 0:
                np.save(f"{root}/{part}/image/{pid}.npy", keypoints_for(i, 1, h, w)[0])
        pairs = [(p, ids[(k + 1) % n]) for k, p in enumerate(ids)] if part == "test" else [(p, p) for p in ids]
        with open(f"{root}/{part}_pairs.txt", "w") as f:
            f.writelines(f"{a}.jpg {b}.jpg\n" for a, b in pairs)
    return root


@pytest.fixture
def fakes():
    return types.SimpleNamespace(
        frames_for=frames_for, keypoints_for=keypoints_for, write_mp4=write_mp4, make_ubc=make_ubc,
        make_tiktok=make_tiktok, make_video_folder=make_video_folder, make_viton=make_viton, H=H, W=W, T=T)
