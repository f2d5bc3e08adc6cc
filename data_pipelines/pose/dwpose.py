"""DWPose whole-body keypoints with ONNX Runtime, from user-supplied model files.

Models (never downloaded here; the user points at local files):
  * detector ``yolox_l.onnx``: YOLOX-L, input ``[1, 3, 640, 640]`` float RGB 0..255 (letterboxed, padded
    with 114), output ``[1, 8400, 85]`` per anchor (strides 8/16/32): box offsets (x, y, log w, log h),
    objectness and 80 class probabilities (already sigmoided);
  * pose ``dw-ll_ucoco_384.onnx``: input ``[N, 3, 384, 288]`` (a person crop, RGB normalised with mean
    (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375)), outputs SimCC ``simcc_x [N, 133, 576]`` and
    ``simcc_y [N, 133, 768]`` (2 bins per input pixel).
Pipeline per frame, as DWPose does: detect people (score = objectness x person probability > 0.1, NMS
at IoU 0.45, keep > 0.3; with no detection the whole frame is the box), crop each box padded by 1.25 at
the pose model's aspect ratio, run the pose model on all crops in batches, decode SimCC (arg-max bin /
2, score = min of the x and y maxima), map back to frame pixels, and keep the person with the highest
mean body-keypoint score. Output: float32 ``[133, 3]`` per frame (x, y in frame pixels, score).
Frames go in as RGB, as in DWPose's own annotator and MimicMotion (the ImageNet mean/std are RGB-ordered).

If a GPU provider is requested but the session runs on the CPU (``onnxruntime`` instead of
``onnxruntime-gpu``, a CUDA/cuDNN mismatch), a loud warning is logged and printed to stderr: extraction
is then ~100x slower, a trap users of other projects fall into silently.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, List, Sequence, Tuple, Union

import cv2
import numpy as np

from humandiff.data import keypoints as kpl

log = logging.getLogger(__name__)

DET_SIZE = (640, 640)  # (height, width)
DET_STRIDES = (8, 16, 32)
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
SIMCC_SPLIT = 2.0
BOX_PADDING = 1.25

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")
ProviderSpec = Union[str, Sequence[str]]


def _resolve_providers(device: ProviderSpec) -> List[str]:
    if isinstance(device, str):
        if device == "cpu":
            return ["CPUExecutionProvider"]
        if device in ("cuda", "gpu"):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        raise ValueError(f"DWPose device must be 'cpu', 'cuda' or a list of ONNX Runtime providers, got {device!r}")
    return list(device)


def make_session(path: str, device: ProviderSpec = "cpu"):
    """An ``onnxruntime.InferenceSession`` for ``path``, warning loudly on a silent CPU fallback."""
    import onnxruntime as ort  # the [pose] extra; imported here so the package imports without it

    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model file not found: {path} (DWPose needs local yolox_l.onnx and "
                                f"dw-ll_ucoco_384.onnx files; nothing is downloaded)")
    requested = _resolve_providers(device)
    available = ort.get_available_providers()
    state = ort.capi.onnxruntime_pybind11_state  # ONNX Runtime's exceptions for a file it cannot load
    try:
        session = ort.InferenceSession(path, providers=[p for p in requested if p in available]
                                       or ["CPUExecutionProvider"])
    except (state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile, state.Fail) as e:
        raise ValueError(f"cannot load the ONNX model in {path}: {' '.join(str(e).split())}; the file is corrupt or "
                         "not an ONNX model (download it again)") from e
    wanted_gpu = [p for p in requested if p in GPU_PROVIDERS]
    used = session.get_providers()
    if wanted_gpu and not any(p in used for p in wanted_gpu):
        msg = (f"WARNING: DWPose asked for {wanted_gpu[0]} but ONNX Runtime runs {os.path.basename(path)} on "
               f"{used[0]} (available providers: {available}). Pose extraction will be very slow. Install "
               f"onnxruntime-gpu matching your CUDA/cuDNN, or pass device='cpu' to silence this.")
        log.warning(msg)
        print(msg, file=sys.stderr, flush=True)
    return session


def _batch_dim(session) -> Union[int, None]:
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def letterbox(image: np.ndarray, size: Tuple[int, int] = DET_SIZE) -> Tuple[np.ndarray, float]:
    """Resizes keeping the aspect ratio into the top-left of a 114-grey canvas; returns (CHW float32, ratio)."""
    h, w = image.shape[:2]
    r = min(size[0] / h, size[1] / w)
    nh, nw = int(h * r), int(w * r)
    canvas = np.full((size[0], size[1], 3), 114, np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), r


def _anchor_grid(size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    grids, strides = [], []
    for s in DET_STRIDES:
        gy, gx = np.mgrid[: size[0] // s, : size[1] // s]
        grids.append(np.stack([gx.ravel(), gy.ravel()], -1))
        strides.append(np.full((gx.size, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> List[int]:
    """Greedy non-maximum suppression over ``[N, 4]`` xyxy boxes; returns kept indices, best first."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]) + 1)
        h = np.maximum(0.0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou_threshold]
    return keep


def decode_detections(raw: np.ndarray, ratio: float, *, size: Tuple[int, int] = DET_SIZE, score_threshold: float = 0.1,
                      nms_threshold: float = 0.45, keep_threshold: float = 0.3) -> np.ndarray:
    """YOLOX raw output ``[A, 85]`` of one image -> person boxes ``[K, 5]`` (x0, y0, x1, y1, score) in frame pixels."""
    grid, stride = _anchor_grid(size)
    if raw.shape[0] != grid.shape[0]:
        raise ValueError(f"detector output has {raw.shape[0]} anchors, expected {grid.shape[0]} for a "
                         f"{size[1]}x{size[0]} YOLOX input")
    xy = (raw[:, :2] + grid) * stride
    wh = np.exp(raw[:, 2:4]) * stride
    scores = raw[:, 4] * raw[:, 5]  # objectness x P(person)
    ok = scores > score_threshold
    if not ok.any():
        return np.zeros((0, 5), np.float32)
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)[ok] / ratio
    scores = scores[ok]
    keep = [i for i in nms(boxes, scores, nms_threshold) if scores[i] > keep_threshold]
    return np.concatenate([boxes[keep], scores[keep, None]], axis=1).astype(np.float32)


def crop_for_pose(image: np.ndarray, box: np.ndarray, input_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray,
                                                                                               np.ndarray]:
    """Affine crop of a box (padded by 1.25, widened to the model's aspect) -> (CHW normalised, center, scale)."""
    h_in, w_in = input_hw
    x0, y0, x1, y1 = box[:4]
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float64)
    w, h = (x1 - x0) * BOX_PADDING, (y1 - y0) * BOX_PADDING
    aspect = w_in / h_in
    scale = np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], np.float64)
    k = w_in / scale[0]  # == h_in / scale[1]
    warp = np.array([[k, 0, w_in / 2 - k * center[0]], [0, k, h_in / 2 - k * center[1]]], np.float64)
    crop = cv2.warpAffine(image, warp, (w_in, h_in), flags=cv2.INTER_LINEAR).astype(np.float32)
    crop = (crop - POSE_MEAN) / POSE_STD
    return np.ascontiguousarray(crop.transpose(2, 0, 1)), center, scale


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray, center: np.ndarray, scale: np.ndarray,
                 input_hw: Tuple[int, int]) -> np.ndarray:
    """SimCC ``[N, K, Wx]``, ``[N, K, Wy]`` -> ``[N, K, 3]`` keypoints in frame pixels (scores <= 0 -> 0)."""
    x = np.argmax(simcc_x, axis=-1).astype(np.float64) / SIMCC_SPLIT
    y = np.argmax(simcc_y, axis=-1).astype(np.float64) / SIMCC_SPLIT
    score = np.minimum(np.max(simcc_x, axis=-1), np.max(simcc_y, axis=-1))
    wh_in = np.array([input_hw[1], input_hw[0]], np.float64)
    xy = np.stack([x, y], -1) / wh_in * scale[:, None] + center[:, None] - scale[:, None] / 2
    return np.concatenate([xy, np.maximum(score, 0.0)[..., None]], -1).astype(np.float32)


def _chunks(n: int, size: Union[int, None], default: int) -> Iterable[Tuple[int, int]]:
    step = size or default
    for i in range(0, n, step):
        yield i, min(n, i + step)


class DWPose:
    """Whole-body pose extractor: ``DWPose(det, pose)(frames_rgb) -> [T, 133, 3]``.

    Args:
      det_path: YOLOX-L detector ONNX file (``yolox_l.onnx``).
      pose_path: DWPose ONNX file (``dw-ll_ucoco_384.onnx``).
      device: ``"cpu"``, ``"cuda"`` or a list of ONNX Runtime provider names.
      batch_size: crops per pose-model call when its batch axis is dynamic.
    """

    def __init__(self, det_path: str, pose_path: str, *, device: ProviderSpec = "cpu", batch_size: int = 16):
        for path in (det_path, pose_path):  # both checked before either session is built
            if not os.path.isfile(path):
                raise FileNotFoundError(f"ONNX model file not found: {path} (DWPose needs local yolox_l.onnx "
                                        f"and dw-ll_ucoco_384.onnx files; nothing is downloaded)")
        self.det = make_session(det_path, device)
        self.pose = make_session(pose_path, device)
        det_in = self.det.get_inputs()[0].shape
        self.det_size = tuple(d if isinstance(d, int) else s for d, s in zip(det_in[2:], DET_SIZE))
        pose_in = self.pose.get_inputs()[0].shape
        if not (isinstance(pose_in[2], int) and isinstance(pose_in[3], int)):
            raise ValueError(f"{pose_path}: pose model input must have a fixed height and width, got {pose_in}")
        self.pose_hw = (pose_in[2], pose_in[3])
        names = [o.name for o in self.pose.get_outputs()]
        self.pose_outputs = ["simcc_x", "simcc_y"] if {"simcc_x", "simcc_y"} <= set(names) else names[:2]
        self.batch_size = batch_size

    def detect(self, frames: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Person boxes ``[K, 5]`` per frame (a whole-frame box where nobody is detected)."""
        inputs = [letterbox(f, self.det_size) for f in frames]
        name = self.det.get_inputs()[0].name
        out: List[np.ndarray] = []
        for a, b in _chunks(len(inputs), _batch_dim(self.det), self.batch_size):
            raw = self.det.run(None, {name: np.stack([x for x, _ in inputs[a:b]])})[0]
            for j in range(b - a):
                boxes = decode_detections(raw[j], inputs[a + j][1], size=self.det_size)
                if not len(boxes):
                    h, w = frames[a + j].shape[:2]
                    boxes = np.array([[0, 0, w, h, 0.0]], np.float32)
                out.append(boxes)
        return out

    def estimate(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Keypoints ``[K, 133, 3]`` for every box of every frame (all crops batched together)."""
        crops, centers, scales, owner = [], [], [], []
        for t, (frame, fb) in enumerate(zip(frames, boxes)):
            for box in fb:
                c, ctr, sc = crop_for_pose(frame, box, self.pose_hw)
                crops.append(c), centers.append(ctr), scales.append(sc), owner.append(t)
        name = self.pose.get_inputs()[0].name
        fixed = _batch_dim(self.pose)
        kps = []
        for a, b in _chunks(len(crops), fixed, self.batch_size):
            batch = np.stack(crops[a:b])
            if fixed and len(batch) < fixed:  # a fixed-batch model: pad the last chunk
                batch = np.concatenate([batch, np.zeros((fixed - len(batch),) + batch.shape[1:], np.float32)])
            sx, sy = self.pose.run(self.pose_outputs, {name: batch})
            n = b - a
            kps.append(decode_simcc(sx[:n], sy[:n], np.array(centers[a:b]), np.array(scales[a:b]), self.pose_hw))
        flat = np.concatenate(kps) if kps else np.zeros((0, kpl.NUM_KEYPOINTS, 3), np.float32)
        owner_arr = np.array(owner)
        return [flat[owner_arr == t] for t in range(len(frames))]

    def __call__(self, frames_rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB ``[T, H, W, 3]`` (or one ``[H, W, 3]`` frame) -> float32 ``[T, 133, 3]`` (or ``[133, 3]``)."""
        frames = np.asarray(frames_rgb)
        single = frames.ndim == 3
        if single:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"DWPose expects RGB frames [T, H, W, 3] or [H, W, 3], got {frames.shape}")
        rgb = [np.ascontiguousarray(f) for f in frames.astype(np.uint8)]
        people = self.estimate(rgb, self.detect(rgb))
        out = np.zeros((len(rgb), kpl.NUM_KEYPOINTS, 3), np.float32)
        for t, kp in enumerate(people):
            if len(kp):
                out[t] = kp[int(np.argmax(kp[:, kpl.BODY, 2].mean(-1)))]
        return out[0] if single else out
