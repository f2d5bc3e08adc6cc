"""The evaluation run behind `python -m humandiff.evaluate`: pairs videos, streams metrics, writes JSON/markdown.

Protocols:
* `disco` (what DisCo, MagicAnimate, Champ, Animate Anyone, UniAnimate ... report on TikTok/UBC-Fashion):
  L1 = mean |a-b| / (H*W) (0-255 units), PSNR = legacy uint8-overflow PSNR, PSNR* = float PSNR, SSIM on OpenCV
  grayscale (7x7 uniform), LPIPS-VGG fed [0, 1] images, FID on Inception pool3 of every frame (299 px clean-fid
  bicubic, `(x - 128) / 128`), FID-VID on 3D-ResNet-50 features of 16-frame clips at 112 px, FVD on I3D logits of
  16-frame clips at 224 px.
* `standard`: L1 = mean |a-b| in [0, 1], PSNR* only, SSIM on RGB with the 11x11 Gaussian window (Wang et al.),
  LPIPS-VGG fed [-1, 1]; FID / FID-VID / FVD as in `disco`.
Per-frame metrics are averaged over all frames of all videos (DisCo averages per frame).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from humandiff import media
from humandiff.metrics import image, preprocess, video_io, weights
from humandiff.metrics.frechet import frechet_from_features
from humandiff.weights.io import WeightsError

ALL_METRICS = ("l1", "psnr", "psnr_star", "ssim", "lpips", "fid", "fid_vid", "fvd")
PROTOCOL_METRICS = {"disco": ALL_METRICS, "standard": ("l1", "psnr_star", "ssim", "lpips", "fid", "fid_vid", "fvd")}
NETWORK_OF = {"lpips": "lpips", "fid": "inception", "fid_vid": "r3d50", "fvd": "i3d"}
LABELS = {"l1": "L1", "psnr": "PSNR (legacy)", "psnr_star": "PSNR*", "ssim": "SSIM", "lpips": "LPIPS",
          "fid": "FID", "fid_vid": "FID-VID", "fvd": "FVD"}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to compute and how; defaults are the published protocol."""

    protocol: str = "disco"  # disco | standard
    weights_dir: str | None = None  # folder with the converted *.safetensors files
    metrics: tuple[str, ...] | None = None  # explicit request (missing weights -> error); None = all available
    split: str | None = None  # tiktok | ubc_fashion | path to an id list; None = every common video
    fid_size: int = 299  # Inception input side
    fid_vid_size: int = 112  # 3D-ResNet-50 input side
    fvd_size: int = 224  # I3D input side
    clip_len: int = preprocess.CLIP_LEN  # frames per FID-VID / FVD clip
    batch_size: int = 16  # frames (or clips) per network call
    video_samples: str = "clips"  # clips: every 16-frame clip is a sample | videos: one sample per video (DisCo)


def _select(config: EvalConfig) -> tuple[list[str], dict[str, str]]:
    """Metrics to run and metrics skipped (with reasons); explicit requests with missing weights raise."""
    if config.video_samples not in ("clips", "videos"):
        raise ValueError(f"video_samples must be 'clips' or 'videos', got {config.video_samples!r}")
    if config.protocol not in PROTOCOL_METRICS:
        raise ValueError(f"unknown protocol {config.protocol!r}; expected one of {sorted(PROTOCOL_METRICS)}")
    allowed = PROTOCOL_METRICS[config.protocol]
    requested = list(config.metrics) if config.metrics else list(allowed)
    bad = [m for m in requested if m not in allowed]
    if bad:
        raise ValueError(f"metrics {bad} are not part of protocol {config.protocol!r} (available: {list(allowed)})")
    run, skipped = [], {}
    for m in requested:
        net = NETWORK_OF.get(m)
        if net is not None:
            path = os.path.join(config.weights_dir or "WEIGHTS_DIR", weights.WEIGHT_FILES[net])
            if config.weights_dir is None or not os.path.isfile(path):
                hint = (f"expected {path} (pass --weights); create it with `python -m humandiff.metrics.convert "
                        f"--net {net} --src {weights.SOURCE_FILES[net]} --out {path} --allow-pickle`")
                if config.metrics:
                    raise WeightsError(f"metric {m!r} was requested but its weights file is missing: {hint}")
                skipped[m] = f"weights missing: {hint}"
                continue
        run.append(m)
    return run, skipped


def pair_videos(pred_dir: str, gt_dir: str, split: str | None) -> list[tuple[str, str, str]]:
    """`(id, pred_path, gt_path)` for the evaluated videos; a video missing on either side is an error."""
    pred, gt = video_io.list_videos(pred_dir), video_io.list_videos(gt_dir)
    if split is not None:
        ids = video_io.read_split(split)
        missing = {"predictions": [i for i in ids if i not in pred], "ground truth": [i for i in ids if i not in gt]}
        missing = {k: v for k, v in missing.items() if v}
        if missing:
            raise ValueError(f"split {split!r} lists videos that are missing: {missing}")
    else:
        ids = sorted(gt)
        only_pred, only_gt = sorted(set(pred) - set(gt)), sorted(set(gt) - set(pred))
        if only_pred or only_gt:
            raise ValueError(
                f"prediction and ground-truth videos do not match: {len(pred)} in {pred_dir}, {len(gt)} in {gt_dir}; "
                f"only in predictions: {only_pred[:10]}, only in ground truth: {only_gt[:10]}"
            )
    return [(i, pred[i], gt[i]) for i in ids]


@functools.cache
def _jitted_apply(module: Any):
    """One jitted `apply` per (hashable) module, so repeated evaluations in a process compile once."""
    return jax.jit(module.apply)


class _Networks:
    """Loads the feature networks that are needed and runs them in fixed-size jitted batches."""

    def __init__(self, config: EvalConfig, metrics: Sequence[str]):
        # pylint: disable=import-outside-toplevel
        from humandiff.metrics.i3d import InceptionI3d
        from humandiff.metrics.inception import InceptionV3FID
        from humandiff.metrics.lpips import LPIPS
        from humandiff.metrics.r3d import ResNet3D50

        self.config = config
        self.apply: dict[str, Any] = {}
        specs = {
            "lpips": (LPIPS(), 2, (1, 64, 64, 3)),
            "fid": (InceptionV3FID(), 1, (1, config.fid_size, config.fid_size, 3)),
            "fid_vid": (ResNet3D50(), 1, (1, config.clip_len, config.fid_vid_size, config.fid_vid_size, 3)),
            "fvd": (InceptionI3d(), 1, (1, config.clip_len, config.fvd_size, config.fvd_size, 3)),
        }
        for m in metrics:
            if m not in specs:
                continue
            module, n_in, shape = specs[m]
            path = os.path.join(config.weights_dir, weights.WEIGHT_FILES[NETWORK_OF[m]])
            example = [jax.ShapeDtypeStruct(shape, jnp.float32)] * n_in
            params = weights.load_params(path, module, *example)
            self.apply[m] = (_jitted_apply(module), params)

    def __call__(self, metric: str, *inputs: np.ndarray) -> np.ndarray:
        fn, params = self.apply[metric]
        n, bs = inputs[0].shape[0], self.config.batch_size
        outs = []
        for s in range(0, n, bs):
            chunk = [x[s:s + bs] for x in inputs]
            k = chunk[0].shape[0]
            padded = min(bs, 1 << (k - 1).bit_length())  # power-of-two buckets: few compiles, little waste
            if k < padded:
                chunk = [np.concatenate([c, np.zeros((padded - k,) + c.shape[1:], c.dtype)]) for c in chunk]
            outs.append(np.asarray(fn(params, *[jnp.asarray(c, jnp.float32) for c in chunk]))[:k])
        return np.concatenate(outs)


def _frame_scores(protocol: str, metrics: Sequence[str], p: np.ndarray, g: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    disco = protocol == "disco"
    if "l1" in metrics:
        out["l1"] = image.l1_disco(p, g) if disco else np.abs(p.astype(np.float64) - g).mean(axis=(1, 2, 3)) / 255.0
    if "psnr" in metrics:
        out["psnr"] = image.psnr(p, g, legacy=True)
    if "psnr_star" in metrics:
        out["psnr_star"] = image.psnr(p, g)
    if "ssim" in metrics:
        out["ssim"] = image.ssim_disco(p, g) if disco else image.ssim(p, g, gaussian=True)
    return out


def _video_features(nets: _Networks, config: EvalConfig, m: str, frames: np.ndarray) -> np.ndarray:
    """Feature rows of one video: one per frame (FID), per clip, or per video (`video_samples="videos"`).

    `videos` reproduces DisCo on whole videos: FID-VID averages the features of the video's 16-frame segments
    (last frame repeated to fill the final one); FVD runs I3D once over all frames. DisCo feeds 16-frame GIFs,
    for which both modes agree.
    """
    if m == "fid":
        from humandiff.metrics.inception import normalize_for_inception  # pylint: disable=import-outside-toplevel

        return nets(m, np.asarray(normalize_for_inception(preprocess.resize_frames(frames, config.fid_size))))
    per_video = config.video_samples == "videos"
    if m == "fid_vid":
        from humandiff.metrics.r3d import KINETICS_MEAN  # pylint: disable=import-outside-toplevel

        x = preprocess.resize_frames(frames, config.fid_vid_size) - np.asarray(KINETICS_MEAN, np.float32)
        if per_video:
            return nets(m, preprocess.pad_to_clips(x, config.clip_len)).mean(axis=0, keepdims=True)
        return nets(m, preprocess.split_clips(x, config.clip_len))
    x = preprocess.resize_frames(frames, config.fvd_size) / 127.5 - 1.0
    return nets(m, x[None] if per_video else preprocess.split_clips(x, config.clip_len))


def evaluate(pred_dir: str, gt_dir: str, config: EvalConfig) -> dict[str, Any]:
    """Runs every selected metric over paired videos and returns the result record (see `write_report`)."""
    metrics, skipped = _select(config)
    for m, why in skipped.items():
        logging.warning("skipping %s: %s", m, why)
    pairs = pair_videos(pred_dir, gt_dir, config.split)
    nets = _Networks(config, metrics)
    per_frame: dict[str, list[np.ndarray]] = {m: [] for m in metrics if m not in ("fid", "fid_vid", "fvd")}
    feats: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {m: ([], []) for m in ("fid", "fid_vid", "fvd")}
    num_frames, resolution = 0, None
    for vid, ppath, gpath in tqdm(pairs, desc="videos", unit="video"):
        p, g = media.read_video(ppath)[0], media.read_video(gpath)[0]
        if p.shape[0] != g.shape[0]:
            raise ValueError(f"video {vid}: {p.shape[0]} predicted frames ({ppath}) vs {g.shape[0]} ground truth "
                             f"({gpath})")
        if p.shape != g.shape:
            raise ValueError(f"video {vid}: predicted frames are {p.shape[1]}x{p.shape[2]}, ground truth "
                             f"{g.shape[1]}x{g.shape[2]}; resize the predictions to the ground-truth size first")
        num_frames += p.shape[0]
        resolution = resolution or [int(g.shape[1]), int(g.shape[2])]
        for m, v in _frame_scores(config.protocol, metrics, p, g).items():
            per_frame[m].append(v)
        if "lpips" in metrics:
            pa, ga = p.astype(np.float32) / 255.0, g.astype(np.float32) / 255.0
            if config.protocol != "disco":
                pa, ga = pa * 2.0 - 1.0, ga * 2.0 - 1.0
            per_frame["lpips"].append(nets("lpips", pa, ga))
        for m in ("fid", "fid_vid", "fvd"):
            if m in metrics:
                feats[m][0].append(_video_features(nets, config, m, p))
                feats[m][1].append(_video_features(nets, config, m, g))
    values = {m: float(np.mean(np.concatenate(v))) for m, v in per_frame.items()}
    for m in ("fid", "fid_vid", "fvd"):
        if m in metrics:
            values[m] = frechet_from_features(np.concatenate(feats[m][0]), np.concatenate(feats[m][1]))
    ordered = {m: values[m] for m in ALL_METRICS if m in values}
    return {"protocol": config.protocol, "split": config.split, "num_videos": len(pairs), "num_frames": num_frames,
            "resolution": resolution, "clip_len": config.clip_len,
            "video_samples": config.video_samples, "metrics": ordered, "skipped": skipped,
            "videos": [v for v, _, _ in pairs]}


def markdown_table(result: dict[str, Any]) -> str:
    """One-row markdown table of the metrics (L1 in scientific notation, as papers print it)."""
    names = list(result["metrics"])
    head = "| " + " | ".join(LABELS[m] for m in names) + " |"
    sep = "|" + "|".join("---" for _ in names) + "|"
    cells = [f"{v:.2E}" if m == "l1" else f"{v:.4f}" if m in ("ssim", "lpips") else f"{v:.2f}"
             for m, v in result["metrics"].items()]
    note = (f"\nprotocol `{result['protocol']}`, {result['num_videos']} videos, {result['num_frames']} frames, "
            f"{result['resolution'][0]}x{result['resolution'][1]} px")
    if result["skipped"]:
        note += "; skipped: " + ", ".join(result["skipped"])
    return "\n".join([head, sep, "| " + " | ".join(cells) + " |", note]) + "\n"


def write_report(result: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """Writes `metrics.json` and `metrics.md` to `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, "metrics.json"), os.path.join(out_dir, "metrics.md")
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(mpath, "w", encoding="utf-8") as f:
        f.write(markdown_table(result))
    return jpath, mpath
