"""Per-example ops: a stored record -> one training example (one entry of the training batch described in docs/data.md).

Image stage: reference and target frames from the same video, at least `min_margin` frames apart.
Video stage: `num_frames` frames `stride` apart plus a reference frame from anywhere in the video.
Try-on: garment as reference, person as target, agnostic mask as `tryon_mask`.
Held-out (the trainer's evaluations): `held_out_video` makes a fixed example of a video record.
With `reference_crop_scale` set, the image and video stages frame the reference with its own crop (another camera
distance and offset than the targets'), and its pose follows that crop.
Each op draws everything random from the per-example generator grain passes in, so an example depends
only on (seed, index) and a restored iterator reproduces it exactly.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np
from PIL import Image

from humandiff.data import transforms


@dataclasses.dataclass(frozen=True)
class ExampleOptions:
    """The per-example settings (see `humandiff.data.loader.default_config` for their meaning)."""

    stage: str = "image"
    height: int = 512
    width: int = 512
    num_frames: int = 16
    stride: int = 4
    min_margin: int = 8
    drop_prob: float = 0.1
    flip_prob: float = 0.5
    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_mode: str = "fill"
    reference_crop_scale: tuple[float, ...] = ()
    clip_size: int = 224
    score_threshold: float = 0.3
    skip_short: bool = False


def _render(kp: np.ndarray, h: int, w: int, threshold: float) -> np.ndarray:
    from humandiff.data import pose_render

    return pose_render.render_pose(kp, h, w, score_threshold=threshold).astype(np.float32) / 255.0


def _frames_and_keypoints(record: dict[str, Any]) -> tuple[Any, Any, str]:
    """(frames, keypoints, video_id): frames are JPEG bytes or uint8 [T,H,W,3], keypoints [T,133,3]; either
    may be a lazy sequence (built datasets read a frame record only when it is indexed)."""
    vid = record.get("video_id", "?")
    frames = record["frames_jpeg"] if "frames_jpeg" in record else record.get("frames")
    if frames is None:
        raise ValueError(f"video {vid}: record has neither 'frames_jpeg' nor 'frames' (keys {sorted(record)})")
    kp = record["keypoints"]
    if len(kp) != len(frames):
        raise ValueError(f"video {vid}: {len(kp)} keypoint frames for {len(frames)} frames")
    return frames, kp, vid


def _reference_geometry(rng: np.random.Generator, g: transforms.Geometry, src_h: int, src_w: int,
                        o: ExampleOptions) -> transforms.Geometry:
    """The reference's framing: the targets' `g`, or (with `reference_crop_scale`) a box of its own, same flip."""
    if not o.reference_crop_scale:
        return g
    own = transforms.sample_geometry(rng, src_h, src_w, o.height, o.width, tuple(o.reference_crop_scale), 0.0,
                                     o.crop_mode)
    return dataclasses.replace(own, flip=g.flip)


def _frame_keypoints(kp: Any, i: int, vid: str) -> np.ndarray:
    out = np.asarray(kp[i], np.float32)
    if out.shape != (133, 3):
        raise ValueError(f"video {vid}: keypoints of frame {i} have shape {out.shape}, expected (133, 3)")
    return out


class VideoExampleOp:
    """grain random_map op for the image and video stages (callable `(record, rng) -> example | None`)."""

    def __init__(self, options: ExampleOptions):
        if options.stage not in ("image", "video"):
            raise ValueError(f"VideoExampleOp: stage {options.stage!r} is not 'image' or 'video'")
        self.o = options

    def _indices(self, rng: np.random.Generator, num_frames: int, vid: str) -> tuple[np.ndarray, int] | None:
        o = self.o
        try:
            if o.stage == "image":
                ref, tgt = transforms.sample_pair(rng, num_frames, o.min_margin)
                return np.array([tgt]), ref
            return transforms.sample_clip(rng, num_frames, o.num_frames, o.stride)
        except ValueError as e:
            if o.skip_short:
                return None
            raise ValueError(
                f"video {vid}: {e}. Rebuild the dataset with a larger --min_frames, lower "
                f"num_frames/stride/min_margin, or set data.skip_short=True") from e

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        o = self.o
        frames, kp, vid = _frames_and_keypoints(record)
        picked = self._indices(rng, len(frames), vid)
        if picked is None:
            return None
        tgt_idx, ref_idx = picked
        ref_img = transforms.open_frame(frames[ref_idx])
        src_w, src_h = ref_img.size
        g = transforms.sample_geometry(rng, src_h, src_w, o.height, o.width, o.crop_scale, o.flip_prob,
                                       o.crop_mode)
        g_ref = _reference_geometry(rng, g, src_h, src_w, o)
        ref = transforms.apply_geometry(ref_img, g_ref)
        tgt_images, tgt_poses = [], []
        for i in tgt_idx:
            if i == ref_idx and g_ref is g:
                out = ref
            else:
                img = transforms.open_frame(frames[i])
                if img.size != (src_w, src_h):
                    raise ValueError(f"video {vid}: frame {i} is {img.size}, frame {ref_idx} is {(src_w, src_h)}")
                out = transforms.apply_geometry(img, g)
            tgt_images.append(transforms.to_signed_float(out))
            kp_i = transforms.transform_keypoints(_frame_keypoints(kp, i, vid), g)
            tgt_poses.append(_render(kp_i, o.height, o.width, o.score_threshold))
        example = {
            "ref_image": transforms.to_signed_float(ref),
            "ref_pose": _render(transforms.transform_keypoints(_frame_keypoints(kp, ref_idx, vid), g_ref),
                                o.height, o.width, o.score_threshold),
            "tgt_image": np.stack(tgt_images) if o.stage == "video" else tgt_images[0],
            "tgt_pose": np.stack(tgt_poses) if o.stage == "video" else tgt_poses[0],
            "clip_image": transforms.clip_preprocess(ref, o.clip_size),
            "drop_cond": np.bool_(rng.random() < o.drop_prob),
        }
        return example


def held_out_video(record: dict[str, Any], options: ExampleOptions, num_frames: int) -> dict[str, np.ndarray]:
    """A fixed evaluation example of a video record: frame 0 is the reference, `num_frames` targets spread evenly
    over the rest (so the reference is rarely a good copy of them), the whole frame centred, no flip. With
    `reference_crop_scale` the reference has its own crop, drawn as in training from a generator seeded by the
    video's name (the same every time).

    Returns:
        `ref_image [H,W,3]`, `ref_pose [H,W,3]`, `tgt_image [F,H,W,3]`, `tgt_pose [F,H,W,3]` (as the ops above).

    Raises:
        ValueError: the video has fewer than `1 + num_frames` frames (names the video).
    """
    o = options
    frames, kp, vid = _frames_and_keypoints(record)
    if len(frames) < 1 + num_frames:
        raise ValueError(f"video {vid}: {len(frames)} frames; a held-out example needs 1 reference + {num_frames} "
                         "target frames (lower the evaluation's num_frames)")
    stride = (len(frames) - 1) // num_frames
    ref_img = transforms.open_frame(frames[0])
    src_w, src_h = ref_img.size
    whole = transforms.sample_geometry(np.random.default_rng(0), src_h, src_w, o.height, o.width, (1.0, 1.0), 0.0,
                                       o.crop_mode)
    g = dataclasses.replace(whole, x0=(src_w - whole.box_w) / 2, y0=(src_h - whole.box_h) / 2)
    g_ref = _reference_geometry(np.random.default_rng(zlib.crc32(str(vid).encode())), g, src_h, src_w, o)

    def one(i: int, geometry: transforms.Geometry = g) -> tuple[np.ndarray, np.ndarray]:
        image = transforms.apply_geometry(ref_img if i == 0 else transforms.open_frame(frames[i]), geometry)
        pose = _render(transforms.transform_keypoints(_frame_keypoints(kp, i, vid), geometry), o.height, o.width,
                       o.score_threshold)
        return transforms.to_signed_float(image), pose

    ref_image, ref_pose = one(0, g_ref)
    targets = [one(1 + stride * t) for t in range(num_frames)]
    return {"ref_image": ref_image, "ref_pose": ref_pose, "tgt_image": np.stack([t[0] for t in targets]),
            "tgt_pose": np.stack([t[1] for t in targets])}


class TryOnExampleOp:
    """grain random_map op for VITON-HD records: garment -> reference, person -> target, mask -> tryon_mask."""

    def __init__(self, options: ExampleOptions):
        self.o = options

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        o = self.o
        person = transforms.open_frame(record["person_jpeg"])
        mask = transforms.open_frame(record["agnostic_mask_png"])
        if mask.size != person.size:
            raise ValueError(
                f"try-on pair {record.get('id', '?')}: agnostic mask {mask.size} != person {person.size}")
        w, h = person.size
        g = transforms.sample_geometry(rng, h, w, o.height, o.width, o.crop_scale, o.flip_prob, o.crop_mode)
        tgt = transforms.apply_geometry(person, g)
        m = transforms.apply_geometry(mask.convert("L"), g, resample=Image.NEAREST)
        # The garment is shown whole (no crop), flipped with the person so its orientation matches.
        cloth = transforms.open_frame(record["cloth_jpeg"]).convert("RGB")
        cw, ch = cloth.size
        cloth = transforms.apply_geometry(cloth, transforms.Geometry(0.0, 0.0, cw, ch, o.height, o.width, g.flip))
        if bool(record.get("has_keypoints", False)):
            kp = transforms.transform_keypoints(np.asarray(record["keypoints"], np.float32), g)
            tgt_pose = _render(kp, o.height, o.width, o.score_threshold)
        else:
            tgt_pose = np.zeros((o.height, o.width, 3), np.float32)
        return {
            "ref_image": transforms.to_signed_float(cloth),
            "ref_pose": np.zeros((o.height, o.width, 3), np.float32),
            "tgt_image": transforms.to_signed_float(tgt),
            "tgt_pose": tgt_pose,
            "clip_image": transforms.clip_preprocess(cloth, o.clip_size),
            "drop_cond": np.bool_(rng.random() < o.drop_prob),
            "tryon_mask": (np.asarray(m, np.float32)[..., None] > 127.0).astype(np.float32),
        }
