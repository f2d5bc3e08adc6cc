"""Random-access sources for the loader: a TFDS ArrayRecord dataset built by `data_pipelines.build`, or
the synthetic set generated on the fly. Both yield the stored-record contract (docs/data.md):
`{"video_id", "frames_jpeg" | "frames", "keypoints", "fps"}` per video.

Built video datasets hold one record per frame; `write_video_index` (run at the end of every build) scans
them once and writes `video_index.json` (per split: video id, frame count, fps, size) and
`video_index-<split>.npy` (frame record numbers, video after video, frame order). `FrameVideos` then serves
a video as a record whose `frames_jpeg` and `keypoints` are read lazily, frame by frame.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol, Sequence

import numpy as np

INDEX_FILE = "video_index.json"
DATASET_NAMES = ("tiktok", "ubc_fashion", "video_folder", "viton_hd", "synthetic")  # data_pipelines.build names


class RandomAccessSource(Protocol):
    """What grain.MapDataset.source needs."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def resolve_dataset_dir(data_dir: str, name: str = "") -> str:
    """The directory holding dataset_info.json: `data_dir` itself, or `data_dir/name/<newest version>`.

    Raises:
        FileNotFoundError: naming the directories that were searched.
    """
    data_dir = os.path.expanduser(data_dir)
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


def resolve_mix_dirs(data_dir: str, names: Sequence[str]) -> list[str]:
    """The version folder of each dataset of a mixture, `data_dir/<name>/<newest version>`.

    Raises:
        FileNotFoundError: `data_dir` is a single dataset's version folder, or a dataset is not built there
            (names the dataset and the paths searched).
    """
    if len(names) > 1 and os.path.exists(os.path.join(os.path.expanduser(data_dir), "dataset_info.json")):
        raise FileNotFoundError(f"data.data_dir={data_dir!r} is one dataset's version folder; a mixture "
                                f"data.name={','.join(names)!r} needs the build output root (OUT, holding "
                                "OUT/<name>/<version>)")
    return [resolve_dataset_dir(data_dir, n) for n in names]


def parse_mix(name: str, weights: Sequence[float] = ()) -> tuple[tuple[str, float], ...]:
    """`data.name` ("tiktok" or "tiktok,ubc_fashion") and `data.weights` -> ((name, proportion), ...).

    Args:
        name: one dataset name, or several separated by commas (a mixture); "" means `data_dir` is itself
            the dataset version folder.
        weights: sampling weights, one per name (any positive scale; they are normalised to sum to 1);
            empty means equal weights.

    Returns:
        The (name, proportion) pairs in the order written; proportions sum to 1.

    Raises:
        ValueError: an unknown, empty or repeated name, a weight that is not a positive number, or a weight
            count that differs from the name count (the message names `data.name` / `data.weights`).
    """
    names = tuple(n.strip() for n in name.split(",")) if name else ("",)
    if len(names) > 1 or names[0]:
        for n in names:
            if n not in DATASET_NAMES:
                raise ValueError(f"data.name={name!r}: dataset {n!r} is unknown; expected comma-separated names "
                                 f"from {DATASET_NAMES}")
        if len(set(names)) != len(names):
            raise ValueError(f"data.name={name!r}: a dataset is named twice (use data.weights for proportions)")
        if len(names) > 1 and "viton_hd" in names:
            raise ValueError(f"data.name={name!r}: viton_hd (try-on pairs) cannot be mixed with video datasets")
    weights = tuple(weights) if weights else (1.0,) * len(names)
    if len(weights) != len(names):
        raise ValueError(f"data.weights={weights!r}: {len(weights)} weights for the {len(names)} datasets "
                         f"{names} of data.name={name!r} (one weight per name, or () for equal weights)")
    for n, w in zip(names, weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w <= 0:
            raise ValueError(f"data.weights={weights!r}: weight {w!r} of dataset {n!r} must be a number > 0")
    total = float(sum(weights))
    return tuple((n, float(w) / total) for n, w in zip(names, weights))


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


def write_video_index(dataset_dir: str) -> None:
    """Scans the frame records of every split once and writes the video index (no-op for non-video sets).

    Raises:
        ValueError: a video's frame records are incomplete or inconsistent (names the video).
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(dataset_dir)
    if "frame_index" not in builder.info.features:
        return
    index = {}
    for split in builder.info.splits.keys():
        src = builder.as_data_source(split=split)
        by_video: dict[str, list] = {}
        for start in range(0, len(src), 512):  # batched reads: array_record fetches them in parallel
            keys = list(range(start, min(start + 512, len(src))))
            for r, rec in zip(keys, src.__getitems__(keys)):
                vid = rec["video_id"].decode("utf-8") if isinstance(rec["video_id"], bytes) else rec["video_id"]
                by_video.setdefault(vid, []).append((int(rec["frame_index"]), r, int(rec["num_frames"]),
                                                     float(rec["fps"]), int(rec["height"]), int(rec["width"])))
        videos, order = [], []
        for vid in sorted(by_video):
            frames = sorted(by_video[vid])
            n = frames[0][2]
            if [f[0] for f in frames] != list(range(n)):
                raise ValueError(f"{dataset_dir} split {split}: video {vid} has frame records "
                                 f"{[f[0] for f in frames][:10]}... for {n} frames")
            videos.append([vid, n, frames[0][3], frames[0][4], frames[0][5]])
            order.extend(f[1] for f in frames)
        np.save(os.path.join(dataset_dir, f"video_index-{split}.npy"), np.asarray(order, np.int64))
        index[split] = {"videos": videos, "fields": ["video_id", "num_frames", "fps", "height", "width"]}
    with open(os.path.join(dataset_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        json.dump(index, f)


class _LazyFrames:
    """Sequence view of one video's frames: item i reads frame record i (cached while the view lives)."""

    def __init__(self, source, records: np.ndarray, video_id: str, field: str, cache: dict):
        self._source, self._records, self._video_id = source, records, video_id
        self._field, self._cache = field, cache

    def __len__(self) -> int:
        return len(self._records)

    def record(self, i: int) -> dict[str, Any]:
        if i not in self._cache:
            if not 0 <= i < len(self._records):
                raise IndexError(f"video {self._video_id}: frame {i} out of range [0, {len(self._records)})")
            rec = self._source[int(self._records[i])]
            vid = rec["video_id"].decode("utf-8") if isinstance(rec["video_id"], bytes) else rec["video_id"]
            if vid != self._video_id or int(rec["frame_index"]) != i:
                raise ValueError(f"video index out of date: record {self._records[i]} is {vid} frame "
                                 f"{rec['frame_index']}, expected {self._video_id} frame {i}; rerun the build")
            self._cache[i] = rec
        return self._cache[i]

    def __getitem__(self, i: int):
        return self.record(int(i))[self._field]

    def __array__(self, dtype=None, copy=None):
        del copy
        return np.asarray([self[i] for i in range(len(self))], dtype=dtype)


class FrameVideos:
    """Per-video records over a frame-record split, using the build's video index."""

    def __init__(self, source, dataset_dir: str, split: str):
        path = os.path.join(dataset_dir, INDEX_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} missing: the build did not finish; rerun data_pipelines.build")
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)[split]
        self._source = source
        self._videos = entry["videos"]
        order = np.load(os.path.join(dataset_dir, f"video_index-{split}.npy"))
        counts = np.array([v[1] for v in self._videos], np.int64)
        if counts.sum() != len(order) or len(order) != len(source):
            raise ValueError(f"{path}: index of split {split} covers {len(order)} frames, the split has "
                             f"{len(source)}; rerun data_pipelines.build")
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._order = order

    def __len__(self) -> int:
        return len(self._videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vid, n, fps, height, width = self._videos[index]
        records = self._order[self._starts[index]: self._starts[index] + n]
        cache: dict = {}
        return {"video_id": vid, "fps": fps, "height": height, "width": width, "num_frames": n,
                "frames_jpeg": _LazyFrames(self._source, records, vid, "jpeg", cache),
                "keypoints": _LazyFrames(self._source, records, vid, "keypoints", cache)}


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
    source = builder.as_data_source(split=split)
    if "frame_index" in builder.info.features:
        return FrameVideos(source, path, split)
    return _Decoded(source, ("video_id", "id", "cloth_id"))


class SyntheticVideos:
    """The synthetic set generated on access (deterministic by index), with an `fps` field."""

    def __init__(self, num_videos: int, num_frames: int, height: int, width: int, seed: int = 0, fps: float = 8.0,
                 split: str = "train", travel: float = 0.1):
        from humandiff.data import synthetic

        self._source = synthetic.SyntheticSource(num_videos, num_frames, height, width, seed, split=split,
                                                 travel=travel)
        self._fps = float(fps)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = dict(self._source[index])
        record.setdefault("fps", self._fps)
        return record
