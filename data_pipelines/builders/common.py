"""Shared pieces of the TFDS builders: record schema, error policy, the video builder base class.

Records are written as ArrayRecord and read back with `tfds.builder_from_directory(d).as_data_source(s)`
without TensorFlow: frames are JPEG bytes in `Tensor(shape=(), dtype=np.object_)` (no `Image`/`Video`
features, which need TensorFlow to encode or to load).

Videos are stored ONE RECORD PER FRAME, so a training sample reads only the frames it uses (a per-video
record of a 350-frame 720x940 video is ~40 MB; reading and parsing it for two frames cost ~60 ms of CPU).
Frame record:
    video_id     Text        unique within the split
    frame_index  int32       0-based position in the video
    num_frames   int32       frames in the video
    jpeg         bytes       the frame, JPEG, RGB
    keypoints    float32 [133, 3]  COCO-WholeBody (x, y in pixels of the stored frame, score)
    fps          float32     0.0 when unknown (frame folders)
    height, width  int32
After the build, `video_index.json` + `video_index-<split>.npy` (written by
`humandiff.data.sources.write_video_index`) map each video to its frame records; the loader's source
regroups them into the per-video record the loader reads (`frames_jpeg`, `keypoints` read lazily).

Skipped inputs and colour conversions are recorded in the dataset's `metadata.json`:
    {"on_error": "skip", "skipped": {split: [{"file": ..., "reason": ...}]}, "num_skipped": {split: n},
      "conversions": {split: {"RGBA->RGB": n, ...}}}
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from etils import epath
from PIL import Image
import tensorflow_datasets as tfds

from humandiff import media
from humandiff.data import keypoints

_log = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("raise", "skip")


def frame_features() -> tfds.features.FeaturesDict:
    """The TF-free feature schema of a frame record."""
    return tfds.features.FeaturesDict({
        "video_id": tfds.features.Text(),
        "frame_index": tfds.features.Scalar(dtype=np.int32),
        "num_frames": tfds.features.Scalar(dtype=np.int32),
        "jpeg": tfds.features.Tensor(shape=(), dtype=np.object_),
        "keypoints": tfds.features.Tensor(shape=(media.NUM_KEYPOINTS, 3), dtype=np.float32),
        "fps": tfds.features.Scalar(dtype=np.float32),
        "height": tfds.features.Scalar(dtype=np.int32),
        "width": tfds.features.Scalar(dtype=np.int32),
    })


def shrunk_size(height: int, width: int, max_short_side: int) -> tuple[int, int]:
    """(height, width) with the short side at most `max_short_side` (0: unchanged), aspect kept."""
    short = min(height, width)
    if max_short_side <= 0 or short <= max_short_side:
        return height, width
    s = max_short_side / short
    return max(1, round(height * s)), max(1, round(width * s))


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] resized (antialiased bicubic) to `size` = (height, width); unchanged if equal."""
    if frame.shape[:2] == tuple(size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BICUBIC))


def scale_keypoints(kp: np.ndarray, size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """Keypoints [..., 3] in pixels of a `size` frame -> pixels of the frame resized to `new_size`."""
    if tuple(size) == tuple(new_size):
        return kp
    out = np.array(kp, np.float32, copy=True)
    out[..., 0] = (out[..., 0] + 0.5) * (new_size[1] / size[1]) - 0.5  # pixel centres map to pixel centres
    out[..., 1] = (out[..., 1] + 0.5) * (new_size[0] / size[0]) - 0.5
    return out


def check_pixel_keypoints(path: str, kp: np.ndarray, height: int, width: int, threshold: float = 0.3) -> None:
    """Rejects keypoints that look normalised to [0, 1] (the contract is pixels of the frame)."""
    visible = kp[..., 2] > threshold
    if visible.sum() >= 3 and min(height, width) > 8:
        xy = kp[..., :2][visible]
        if float(np.abs(xy).max()) <= 1.5:
            raise media.BadInputError(path, "keypoints look normalised to [0, 1]; expected pixel coordinates")


def frame_records(video: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, frame record) for each frame of a checked video dict (video_id, frames_jpeg, keypoints, ...)."""
    n = len(video["frames_jpeg"])
    for i, (jpeg, kp) in enumerate(zip(video["frames_jpeg"], video["keypoints"])):
        yield f"{video['video_id']}#{i:07d}", {
            "video_id": video["video_id"], "frame_index": np.int32(i), "num_frames": np.int32(n), "jpeg": jpeg,
            "keypoints": kp, "fps": np.float32(video["fps"]), "height": np.int32(video["height"]),
            "width": np.int32(video["width"]),
        }


class ErrorPolicy:
    """Raise on bad input (default) or skip it: counted, logged, and kept for the dataset metadata."""

    def __init__(self, on_error: str = "raise"):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error={on_error!r}; expected one of {ON_ERROR_CHOICES}")
        self.on_error = on_error
        self.skipped: dict[str, list[dict[str, str]]] = {}
        self.conversions: dict[str, media.Conversions] = {}

    def handle(self, split: str, error: media.BadInputError) -> None:
        """Re-raises `error` (on_error=raise) or records it as skipped."""
        if self.on_error == "raise":
            raise error
        _log.warning("skipping %s (split %s): %s", error.path, split, error.reason)
        self.skipped.setdefault(split, []).append({"file": error.path, "reason": error.reason})

    def finish_split(self, split: str, loaded: int) -> None:
        """Fails clearly (instead of TFDS's "No examples were yielded") when every input was bad."""
        if loaded == 0:
            raise ValueError(f"split {split!r}: no usable examples, {len(self.skipped.get(split, []))} inputs "
                             f"skipped as bad (see the warnings above)")

    def counter(self, split: str) -> media.Conversions:
        return self.conversions.setdefault(split, media.Conversions())

    def as_metadata(self) -> dict[str, Any]:
        """JSON-serialisable summary written to metadata.json."""
        return {
            "on_error": self.on_error,
            "skipped": {k: list(v) for k, v in self.skipped.items()},
            "num_skipped": {k: len(v) for k, v in self.skipped.items()},
            "conversions": {k: dict(v) for k, v in self.conversions.items()},
        }


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One raw video: a video file or a folder of frame images, and its pose file."""

    video_id: str
    path: str  # video file, or folder of frames
    pose_path: str
    frame_files: tuple[str, ...] = ()  # frame-folder videos: the frame images, sorted
    frame_folder: bool = False


class VideoBuilderBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for video builders. Subclasses implement `_list_videos(manual_dir) -> {split: [VideoItem]}`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: JPEG frames, COCO-WholeBody keypoints [T,133,3]."}

    def __init__(self, *, on_error: str = "raise", min_frames: int = 2, jpeg_quality: int = 95,
                 num_workers: int = 1, max_short_side: int = 0, **kwargs):
        """Args: on_error: "raise" or "skip"; min_frames: shorter videos are bad input; jpeg_quality: 1-95;
        num_workers: videos decoded/encoded in parallel threads (PyAV and Pillow release the GIL);
        max_short_side: > 0 stores frames shrunk so their short side is at most this (keypoints follow)."""
        self._policy = ErrorPolicy(on_error)
        self._min_frames = int(min_frames)
        self._jpeg_quality = int(jpeg_quality)
        self._num_workers = max(1, int(num_workers))
        self._max_short_side = int(max_short_side)
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup needs the `importlib_resources` backport on Python >= 3.9; the file is enough.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, features=frame_features(),
            metadata=tfds.core.MetadataDict(), homepage=None)

    def download_and_prepare(self, *args, **kwargs):
        """TFDS's build, then the video index that maps each video to its frame records (one read pass;
        skipped when TFDS reused an existing build that already has its index)."""
        super().download_and_prepare(*args, **kwargs)
        from humandiff.data import sources  # the reader owns the index format

        if not os.path.exists(os.path.join(os.fspath(self.data_path), sources.INDEX_FILE)):
            sources.write_video_index(os.fspath(self.data_path))

    @abc.abstractmethod
    def _list_videos(self, manual_dir: str) -> dict[str, list[VideoItem]]:
        """Lists the raw videos per split."""

    def _split_generators(self, dl_manager):
        manual_dir = str(dl_manager.manual_dir)
        if not os.path.isdir(manual_dir):
            raise FileNotFoundError(f"--manual_dir {manual_dir} is not a directory")
        splits = drop_empty_splits(self._list_videos(manual_dir))
        return {split: self._generate_examples(split, items) for split, items in splits.items()}

    def _generate_examples(self, split: str, items: list[VideoItem]) -> Iterator[tuple[str, dict[str, Any]]]:
        loaded = 0
        conversions = self._policy.counter(split)
        for item, result in ordered_parallel_map(lambda it: self._load_video(it, conversions), items,
                                                 self._num_workers):
            if isinstance(result, media.BadInputError):
                self._policy.handle(split, result)
                continue
            loaded += 1
            yield from frame_records(result)
        self._policy.finish_split(split, loaded)
        self.info.metadata.update(self._policy.as_metadata())

    def _load_video(self, item: VideoItem, conversions: media.Conversions) -> dict[str, Any]:
        """Reads one video (file or frame folder) and its poses into a checked record."""
        if item.frame_folder:
            if not item.frame_files:
                raise media.BadInputError(item.path, "no frame images in the video folder")
            frames = (media.read_image(f, conversions) for f in item.frame_files)
        else:
            frames = media.iter_video_frames(item.path, conversions)
        jpegs, size, stored = [], None, None
        for i, frame in enumerate(frames):
            if size is None:
                size = frame.shape[:2]
                stored = shrunk_size(*size, self._max_short_side)
            elif frame.shape[:2] != size:
                where = item.frame_files[i] if item.frame_files else f"{item.path} frame {i}"
                raise media.BadInputError(
                    where, f"frame size {frame.shape[:2]} differs from the first frame's {size}")
            jpegs.append(media.encode_jpeg(resize_frame(frame, stored), self._jpeg_quality))
        if not jpegs:
            raise media.BadInputError(item.path, "video has no frames")
        if len(jpegs) < self._min_frames:
            raise media.BadInputError(
                item.path, f"video too short: {len(jpegs)} frames < min_frames={self._min_frames}")
        fps = 0.0 if item.frame_folder else media.video_fps(item.path)  # after decoding: errors name the cause
        kp = media.load_keypoints(item.pose_path, num_frames=len(jpegs), allow_single_frame=True)
        check_pixel_keypoints(item.pose_path, kp, *size)
        kp = scale_keypoints(kp, size, stored)
        return {"video_id": item.video_id, "frames_jpeg": jpegs, "keypoints": kp, "fps": fps,
                "height": stored[0], "width": stored[1]}


def ordered_parallel_map(fn, items, num_workers: int):
    """Yields (item, fn(item) or the BadInputError it raised), in input order, with at most 2 x num_workers
    results in flight (so memory stays bounded). Other exceptions propagate."""
    if num_workers <= 1:
        for item in items:
            try:
                yield item, fn(item)
            except media.BadInputError as e:
                yield item, e
        return
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= 2 * num_workers:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())


def _result(item, future):
    try:
        return item, future.result()
    except media.BadInputError as e:
        return item, e


def drop_empty_splits(splits: dict[str, list]) -> dict[str, list]:
    """Splits with no listed inputs (e.g. an empty split file) are left out, with a warning."""
    for name in [k for k, v in splits.items() if not v]:
        _log.warning("split %s lists no inputs; it is not built", name)
    kept = {k: v for k, v in splits.items() if v}
    if not kept:
        raise FileNotFoundError("no inputs found for any split")
    return kept


def read_split_list(path: str) -> list[str]:
    """Names listed one per line (blank lines and '#' comments ignored; URLs reduced to basenames)."""
    names = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(os.path.basename(line.split()[0]))
    return names


# `<video>.npy` beside the video (`a/b.mp4` -> `a/b.npy`, frame folder `a/00001` -> `a/00001.npy`): the one rule that
# the DWPose extractor writes by and the fake layouts follow.
pose_path_for = keypoints.pose_path_for
