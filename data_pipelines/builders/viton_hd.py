"""TFDS builder: VITON-HD virtual try-on (Choi et al., CVPR 2021), 11,647 train / 2,032 test pairs.

Layout (`--manual_dir DIR`), as the dataset unpacks (agnostic masks as in the StableVITON/IDM-VTON release):
  DIR/train_pairs.txt, DIR/test_pairs.txt      "<person>.jpg <cloth>.jpg" per line
  DIR/{train,test}/image/<id>.jpg             person, 1024x768
  DIR/{train,test}/cloth/<id>.jpg             garment
  DIR/{train,test}/cloth-mask/<id>.jpg        garment mask (any 8-bit image; > 127 is garment)
  DIR/{train,test}/agnostic-mask/<id>_mask.png  region to inpaint on the person (> 127 is masked)
  DIR/{train,test}/image/<id>.npy             optional: person keypoints float32 [133, 3] (DWPose)
Splits: `train` (train_pairs.txt), `test_paired` (each test person with its own garment) and
`test_unpaired` (test_pairs.txt, person and garment differ).

Record: id, cloth_id (Text); person_jpeg, cloth_jpeg (JPEG bytes, RGB); cloth_mask_png,
agnostic_mask_png (PNG bytes, 8-bit, 0 or 255); keypoints float32 [133, 3] (zeros when absent);
has_keypoints (bool); height, width (person size).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines.builders import common
from humandiff import media


def _features() -> tfds.features.FeaturesDict:
    blob = lambda: tfds.features.Tensor(shape=(), dtype=np.object_)  # noqa: E731
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "cloth_id": tfds.features.Text(),
        "person_jpeg": blob(),
        "cloth_jpeg": blob(),
        "cloth_mask_png": blob(),
        "agnostic_mask_png": blob(),
        "keypoints": tfds.features.Tensor(shape=(media.NUM_KEYPOINTS, 3), dtype=np.float32),
        "has_keypoints": tfds.features.Scalar(dtype=np.bool_),
        "height": tfds.features.Scalar(dtype=np.int32),
        "width": tfds.features.Scalar(dtype=np.int32),
    })


def _read_pairs(path: str) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected '<person> <cloth>', got {line.strip()!r}")
            pairs.append((parts[0], parts[1]))
    return pairs


def _load_mask(path: str, size: tuple[int, int]) -> bytes:
    """Reads a mask image, binarises it (> 127) and checks its (height, width)."""
    arr = media.read_image(path)  # masks are usually grey: not counted
    if arr.shape[:2] != size:
        raise media.BadInputError(path, f"mask size {arr.shape[:2]} differs from its image's {size}")
    return media.encode_png(np.where(arr.max(axis=-1) > 127, 255, 0).astype(np.uint8))


def _jpeg_rgb(path: str, conversions: media.Conversions, quality: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of an RGB image: an RGB JPEG is kept byte for byte, anything else re-encoded."""
    arr = media.read_image(path, conversions)
    with Image.open(path) as im:
        keep = im.format == "JPEG" and im.mode == "RGB"
    if keep:
        with open(path, "rb") as f:
            return f.read(), arr.shape[:2]
    return media.encode_jpeg(arr, quality), arr.shape[:2]


class VitonHd(common.VideoBuilderBase, skip_registration=True):
    """VITON-HD person / garment / masks, with optional DWPose keypoints of the person."""

    name = "viton_hd"
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, features=_features(), metadata=tfds.core.MetadataDict())

    def _list_videos(self, manual_dir: str):  # not used: try-on records are image pairs
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        root = str(dl_manager.manual_dir)
        splits = {}
        for part in ("train", "test"):
            listing = os.path.join(root, f"{part}_pairs.txt")
            if not os.path.exists(listing):
                continue
            pairs = _read_pairs(listing)
            if not pairs:
                continue
            if part == "train":
                splits["train"] = self._generate_examples("train", root, part, pairs)
            else:
                splits["test_paired"] = self._generate_examples("test_paired", root, part, [(p, p) for p, _ in pairs])
                splits["test_unpaired"] = self._generate_examples("test_unpaired", root, part, pairs)
        if not splits:
            raise FileNotFoundError(f"{root}: expected train_pairs.txt and/or test_pairs.txt")
        return splits

    def _generate_examples(self, split: str, root: str, part: str, pairs) -> Iterator[tuple[str, dict[str, Any]]]:
        loaded = 0
        for person, cloth in pairs:
            try:
                record = self._load_pair(os.path.join(root, part), person, cloth, self._policy.counter(split))
            except media.BadInputError as e:
                self._policy.handle(split, e)
                continue
            loaded += 1
            yield f"{person}|{cloth}", record
        self._policy.finish_split(split, loaded)
        self.info.metadata.update(self._policy.as_metadata())

    def _load_pair(self, folder: str, person: str, cloth: str, conv: media.Conversions) -> dict[str, Any]:
        p_stem, c_stem = os.path.splitext(person)[0], os.path.splitext(cloth)[0]
        person_jpeg, size = _jpeg_rgb(os.path.join(folder, "image", person), conv, self._jpeg_quality)
        cloth_path = os.path.join(folder, "cloth", cloth)
        cloth_jpeg, cloth_size = _jpeg_rgb(cloth_path, conv, self._jpeg_quality)
        cloth_mask = _load_mask(os.path.join(folder, "cloth-mask", cloth), cloth_size)
        agnostic = _load_mask(os.path.join(folder, "agnostic-mask", f"{p_stem}_mask.png"), size)
        kp_path = os.path.join(folder, "image", f"{p_stem}.npy")
        has_kp = os.path.exists(kp_path)
        if has_kp:
            kp = media.load_keypoints(kp_path, num_frames=1, allow_single_frame=True)[0]
            common.check_pixel_keypoints(kp_path, kp, *size)
        else:
            kp = np.zeros((media.NUM_KEYPOINTS, 3), np.float32)
        return {
            "id": p_stem, "cloth_id": c_stem, "person_jpeg": person_jpeg, "cloth_jpeg": cloth_jpeg,
            "cloth_mask_png": cloth_mask, "agnostic_mask_png": agnostic, "keypoints": kp,
            "has_keypoints": has_kp, "height": np.int32(size[0]), "width": np.int32(size[1]),
        }
