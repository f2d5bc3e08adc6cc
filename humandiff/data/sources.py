"""Random-access sources for the loader: a TFDS ArrayRecord dataset built by `data_pipelines.build`, or
the synthetic set generated on the fly. Both yield the stored-record contract of COMMON.md.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol, Sequence


class RandomAccessSource(Protocol):
    """What grain.MapDataset.source needs."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def resolve_dataset_dir(data_dir: str, name: str = "") -> str:
    """The directory holding dataset_info.json: `data_dir` itself, or `data_dir/name/<newest version>`.

    Raises:
        FileNotFoundError: naming the directories that were searched.
    """
    if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        return data_dir
    root = os.path.join(data_dir, name) if name else data_dir
    if os.path.isdir(root):
        versions = [v for v in os.listdir(root) if os.path.exists(os.path.join(root, v, "dataset_info.json"))]
        if versions:
            newest = max(versions, key=lambda v: tuple(int(p) if p.isdigit() else -1 for p in v.split(".")))
            return os.path.join(root, newest)
    raise FileNotFoundError(
        f"no built dataset at data_dir={data_dir!r} name={name!r} (looked for dataset_info.json in "
        f"{data_dir} and {root}/<version>); build it with `python -m data_pipelines.build`")


def dataset_metadata(dataset_dir: str) -> dict[str, Any]:
    """The builder's metadata.json (skipped inputs, colour conversions); {} when absent."""
    path = os.path.join(dataset_dir, "metadata.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _Decoded:
    """Wraps a TFDS data source: text fields bytes -> str (everything else as stored)."""

    def __init__(self, source, text_keys: Sequence[str]):
        self._source = source
        self._text_keys = tuple(text_keys)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = dict(self._source[index])
        for k in self._text_keys:
            if isinstance(record.get(k), bytes):
                record[k] = record[k].decode("utf-8")
        return record

    def __repr__(self) -> str:
        return f"Decoded({self._source!r})"


def open_tfds(data_dir: str, split: str, name: str = "") -> RandomAccessSource:
    """Random-access source over a built dataset split (no TensorFlow needed).

    Args:
        data_dir: OUT/<name>/<version> as printed by `data_pipelines.build`, or OUT together with `name`.
        split: e.g. "train", "test", "test_unpaired".
        name: dataset name under `data_dir` (optional when `data_dir` is the version directory).
    """
    import tensorflow_datasets as tfds  # imported lazily: heavy, and only this source needs it

    path = resolve_dataset_dir(data_dir, name)
    builder = tfds.builder_from_directory(path)
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} not in {path} (has {sorted(builder.info.splits.keys())})")
    return _Decoded(builder.as_data_source(split=split), ("video_id", "id", "cloth_id"))


class SyntheticVideos:
    """The synthetic set generated on access (deterministic by index), with an `fps` field."""

    def __init__(self, num_videos: int, num_frames: int, height: int, width: int, seed: int = 0, fps: float = 8.0):
        from humandiff.data import synthetic

        self._source = synthetic.SyntheticSource(num_videos, num_frames, height, width, seed)
        self._fps = float(fps)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = dict(self._source[index])
        record.setdefault("fps", self._fps)
        return record
