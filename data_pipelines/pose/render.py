"""Render stored keypoints as a DWPose-style skeleton video, optionally aligned to a reference pose.

    python -m data_pipelines.pose.render --poses X.npy --out X_pose.mp4 --size 512x512 \
        [--align_to REF.npy] [--confidence_colors] [--fps 8]

``--align_to`` takes a reference pose file (``[133, 3]``, or ``[T, 133, 3]`` whose first frame is used)
and rescales/moves the whole sequence onto that body first (`humandiff.data.pose_align`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence, Tuple

import numpy as np

from humandiff import cli, media
from humandiff.data.pose_align import align_poses
from humandiff.data.pose_render import render_video


def _size(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--size must look like 512x384 (height x width), got {text!r}") from e
    return h, w


def load_reference(path: str) -> np.ndarray:
    """A reference pose ``[133, 3]`` from a single-frame file, or the first frame of a ``[T, 133, 3]`` file."""
    try:
        return media.load_keypoints(path, video=False, allow_nan_coordinates=True)
    except media.BadInputError:
        return media.load_keypoints(path, allow_nan_coordinates=True)[0]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    p = cli.ArgumentParser(prog="python -m data_pipelines.pose.render", description=__doc__.split("\n")[0])
    p.add_argument("--poses", required=True, help="keypoints .npy/.json, [T, 133, 3]")
    p.add_argument("--out", required=True, help="output .mp4 (H.264)")
    p.add_argument("--size", required=True, type=_size, help="HEIGHTxWIDTH in pixels, e.g. 768x512")
    p.add_argument("--align_to", default=None, help="reference pose file to align the sequence to")
    p.add_argument("--confidence_colors", action="store_true", help="scale colours by keypoint scores")
    p.add_argument("--score_threshold", type=float, default=0.3)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)
    with cli.errors(args.debug):
        cli.refuse_existing([args.out], args.overwrite)
        kp = media.load_keypoints(args.poses, allow_nan_coordinates=True)  # NaN x, y: points left out
        if args.align_to:
            kp = align_poses(kp, load_reference(args.align_to))
        h, w = args.size
        frames = render_video(kp, h, w, score_threshold=args.score_threshold,
                              confidence_colors=args.confidence_colors)
        media.write_mp4(args.out, frames, args.fps, preset="ultrafast")
    print(f"{args.poses}: {len(frames)} frames -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
