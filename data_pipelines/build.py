"""Builds a dataset as TFDS ArrayRecord files, one command per dataset.

  python -m data_pipelines.build --dataset ubc_fashion --manual_dir DIR --data_dir OUT [--on_error skip]
  python -m data_pipelines.build --dataset synthetic --data_dir OUT [--num_videos 64 --num_frames 24]

Datasets: tiktok, ubc_fashion, video_folder, viton_hd, synthetic (each builder's module docstring gives
the raw layout it expects). The result is OUT/<dataset>/1.0.0/, readable without TensorFlow by
`humandiff.data` (grain). With --on_error skip, bad inputs are logged, counted and listed in
OUT/<dataset>/1.0.0/metadata.json; the default (raise) stops at the first one with a message naming it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from data_pipelines.builders import common
from humandiff import cli, media

DATASETS = ("tiktok", "ubc_fashion", "video_folder", "viton_hd", "synthetic")
SYNTHETIC_FLAGS = ("num_videos", "num_test_videos", "num_frames", "height", "width", "seed")


def builder_class(name: str):
    """The builder class of a dataset name (imports only that builder)."""
    if name == "tiktok":
        from data_pipelines.builders.tiktok import Tiktok as cls
    elif name == "ubc_fashion":
        from data_pipelines.builders.ubc_fashion import UbcFashion as cls
    elif name == "video_folder":
        from data_pipelines.builders.video_folder import VideoFolder as cls
    elif name == "viton_hd":
        from data_pipelines.builders.viton_hd import VitonHd as cls
    elif name == "synthetic":
        from data_pipelines.builders.synthetic import Synthetic as cls
    else:
        raise ValueError(f"--dataset {name!r}: expected one of {DATASETS}")
    return cls


def build(dataset: str, data_dir: str, manual_dir: str | None = None, *, on_error: str = "raise",
          min_frames: int = 2, jpeg_quality: int = 95, num_workers: int = 1, max_short_side: int = 0,
          **synthetic_options) -> str:
    """Builds `dataset` into `data_dir` and returns the dataset directory (OUT/<name>/<version>).

    Args:
        dataset: one of `DATASETS`.
        data_dir: output root.
        manual_dir: raw files in the dataset's layout (not used by `synthetic`).
        on_error: "raise" (default) or "skip" bad inputs (recorded in metadata.json).
        min_frames: videos with fewer frames are bad input.
        jpeg_quality: JPEG quality of re-encoded frames.
        num_workers: videos read and encoded in parallel threads.
        max_short_side: > 0 stores video frames with their short side shrunk to at most this many pixels.
        **synthetic_options: num_videos, num_test_videos, num_frames, height, width, seed (synthetic only).

    Returns:
        The directory to pass to `tfds.builder_from_directory` / the loader's `data_dir`.
    """
    import tensorflow_datasets as tfds  # heavy; imported only when building

    cls = builder_class(dataset)
    data_dir = os.path.expanduser(data_dir)
    manual_dir = os.path.expanduser(manual_dir) if manual_dir else manual_dir
    kwargs = dict(data_dir=data_dir, on_error=on_error, min_frames=min_frames, jpeg_quality=jpeg_quality,
                  num_workers=num_workers)
    if dataset not in ("viton_hd", "synthetic"):
        kwargs["max_short_side"] = max_short_side
    elif max_short_side:
        raise ValueError(f"--max_short_side applies to recorded videos, not --dataset {dataset} (VITON-HD is "
                         "stored at full size; synthetic frames are generated at --height x --width)")
    if dataset == "synthetic":
        kwargs.update({k: v for k, v in synthetic_options.items() if v is not None})
    elif manual_dir is None:
        raise ValueError(f"--manual_dir is required for --dataset {dataset}")
    elif not os.path.isdir(manual_dir) or not os.listdir(manual_dir):  # TFDS would only assert
        why = "is empty" if os.path.isdir(manual_dir) else "is not a folder"
        raise FileNotFoundError(f"--manual_dir {manual_dir} {why}; it must hold the raw files in the layout of "
                                f"data_pipelines/builders/{dataset}.py")
    builder = cls(**kwargs)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    return os.fspath(builder.data_path)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m data_pipelines.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data_dir", required=True, help="output root; the dataset goes to DATA_DIR/<name>/1.0.0")
    parser.add_argument("--manual_dir", help="raw files in the dataset's own layout")
    parser.add_argument("--on_error", default="raise", choices=common.ON_ERROR_CHOICES)
    parser.add_argument("--min_frames", type=int, default=2, help="shorter videos are bad input")
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="videos decoded/encoded in parallel threads")
    parser.add_argument("--max_short_side", type=int, default=0,
                        help="store video frames with the short side shrunk to at most this (0: as is); "
                             "e.g. 576 for 512-pixel training: less disk, faster decoding")
    for flag in SYNTHETIC_FLAGS:
        parser.add_argument(f"--{flag}", type=int, default=None, help="synthetic only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = {k: getattr(args, k) for k in SYNTHETIC_FLAGS}
    with cli.errors(args.debug):
        try:
            out = build(args.dataset, args.data_dir, args.manual_dir, on_error=args.on_error,
                        min_frames=args.min_frames, jpeg_quality=args.jpeg_quality, num_workers=args.num_workers,
                        max_short_side=args.max_short_side, **options)
        except media.BadInputError as e:  # the message names the file; no TFDS traceback for the user
            raise media.BadInputError(e.path, f"{e.reason}; rerun with --on_error skip to leave such inputs "
                                              "out") from e
    meta_path = os.path.join(out, "metadata.json")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        print(f"skipped: {meta.get('num_skipped', {})}  conversions: {meta.get('conversions', {})}")
    print(f"built {args.dataset} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
