"""Extract DWPose whole-body keypoints from a video (mp4 or a folder of frames) into ``[T, 133, 3]`` .npy.

    python -m data_pipelines.pose.extract --video X.mp4 --det yolox_l.onnx --pose dw-ll_ucoco_384.onnx \
        [--out X.npy] [--device cuda] [--chunk 32]
    python -m data_pipelines.pose.extract --video train/*.mp4 --det ... --pose ... --skip_existing

``--out`` (one video only) defaults to the pose file's standard place beside the video (``X.npy``; a
frame folder ``00001/`` -> ``00001.npy``). Frames of a folder are its ``.png``/``.jpg``/``.jpeg`` files in
name order, or those of its ``images/`` subfolder (the TikTok dataset's layout).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterator, List, Optional, Sequence

import numpy as np

from data_pipelines.pose.dwpose import DWPose
from humandiff import cli, media
from humandiff.data import keypoints as kpl

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def iter_frames(video: str) -> Iterator[np.ndarray]:
    """Yields uint8 RGB ``[H, W, 3]`` frames of an mp4 or of a folder of images (`humandiff.media` readers)."""
    if os.path.isdir(video):
        names = sorted(n for n in os.listdir(video) if n.lower().endswith(IMAGE_EXTS))
        if not names and os.path.isdir(os.path.join(video, "images")):
            video = os.path.join(video, "images")
            names = sorted(n for n in os.listdir(video) if n.lower().endswith(IMAGE_EXTS))
        if not names:
            raise ValueError(f"{video}: folder has no {'/'.join(IMAGE_EXTS)} frames")
        for n in names:
            yield media.read_image(os.path.join(video, n))
        return
    if not os.path.isfile(video):
        raise FileNotFoundError(f"video not found: {video}")
    try:
        yield from media.iter_video_frames(video)
    except media.BadInputError as e:
        raise ValueError(f"{video}: cannot decode video ({e.reason})") from e


def extract_video(model: DWPose, video: str, chunk: int = 32) -> np.ndarray:
    """Runs ``model`` over every frame of ``video`` in chunks; returns float32 ``[T, 133, 3]``."""
    out: List[np.ndarray] = []
    buf: List[np.ndarray] = []
    for frame in iter_frames(video):
        buf.append(frame)
        if len(buf) == chunk:
            out.append(model(np.stack(buf)))
            buf = []
    if buf:
        out.append(model(np.stack(buf)))
    if not out:
        raise ValueError(f"{video}: no frames decoded")
    return np.concatenate(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    p = cli.ArgumentParser(prog="python -m data_pipelines.pose.extract", description=__doc__.split("\n")[0])
    p.add_argument("--video", required=True, nargs="+", help="mp4 files or folders of frame images")
    p.add_argument("--det", required=True, help="YOLOX detector ONNX file (yolox_l.onnx)")
    p.add_argument("--pose", required=True, help="DWPose ONNX file (dw-ll_ucoco_384.onnx)")
    p.add_argument("--out", default=None, help="output .npy (default: beside the video, same stem)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="ONNX Runtime device")
    p.add_argument("--chunk", type=int, default=32, help="frames per detector/pose batch")
    p.add_argument("--skip_existing", action="store_true", help="skip videos whose pose file exists")
    p.add_argument("--overwrite", action="store_true", help="replace existing pose files")
    args = p.parse_args(argv)
    if args.out and len(args.video) > 1:
        p.error("--out needs exactly one --video")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with cli.errors(args.debug):
        outs = {video: args.out or kpl.pose_path_for(video) for video in args.video}
        cli.refuse_existing([o for o in outs.values() if not args.skip_existing], args.overwrite)
        model = DWPose(args.det, args.pose, device=args.device)
        for video, out in outs.items():
            if args.skip_existing and os.path.exists(out):
                print(f"{video}: {out} exists, skipped", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            kp = extract_video(model, video, args.chunk)
            media.save_keypoints(out, kp)
            dt = time.perf_counter() - t0
            print(f"{video}: {len(kp)} frames -> {out} ({len(kp) / max(dt, 1e-9):.1f} frames/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
