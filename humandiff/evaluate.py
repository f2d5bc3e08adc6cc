"""Metrics of generated videos against ground truth (DisCo protocol by default).

    python -m humandiff.evaluate --pred PRED_DIR --gt GT_DIR --protocol disco --weights WEIGHTS_DIR \
        [--split tiktok|ubc_fashion|FILE] [--metrics l1,psnr,psnr_star,ssim,lpips,fid,fid_vid,fvd] [--out DIR]

PRED_DIR and GT_DIR hold one entry per video with the same ids: a folder of frames (PNG/JPG, sorted by name) or a
video file (mp4, gif, ...). Frame counts and sizes must match. Metrics whose weights file is absent from
WEIGHTS_DIR are skipped with a message naming the file, unless listed in --metrics (then it is an error).
Writes metrics.json and metrics.md to --out (default: PRED_DIR/../<name of PRED_DIR>_metrics) and prints the table.
See humandiff/metrics/suite.py for the protocols and humandiff/metrics/weights.py for the weight files.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from humandiff import cli
from humandiff.metrics import suite


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m humandiff.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, help="folder of generated videos")
    parser.add_argument("--gt", required=True, help="folder of ground-truth videos")
    parser.add_argument("--protocol", default="disco", choices=sorted(suite.PROTOCOL_METRICS))
    parser.add_argument("--weights", default=None, help="folder with the converted metric weights (*.safetensors)")
    parser.add_argument("--metrics", default=None, help="comma-separated subset; listed metrics must be computable")
    parser.add_argument("--split", default=None, help="tiktok | ubc_fashion | a text file of video ids")
    parser.add_argument("--out", default=None, help="output folder for metrics.json and metrics.md")
    parser.add_argument("--batch-size", type=int, default=16, help="frames or clips per network call")
    parser.add_argument("--video-samples", default="clips", choices=("clips", "videos"),
                        help="FID-VID/FVD samples: every 16-frame clip, or one per whole video (DisCo on long videos)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI entry point; returns the result record. Bad inputs exit with one clear message (status 2)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip()) if args.metrics else None
    config = suite.EvalConfig(protocol=args.protocol, weights_dir=args.weights, metrics=metrics, split=args.split,
                              batch_size=args.batch_size, video_samples=args.video_samples)
    with cli.errors(args.debug):
        result = suite.evaluate(args.pred, args.gt, config)
    pred = os.path.abspath(args.pred.rstrip("/"))
    out = args.out or os.path.join(os.path.dirname(pred), os.path.basename(pred) + "_metrics")
    jpath, mpath = suite.write_report(result, out)
    print(suite.markdown_table(result))
    print(f"wrote {jpath} and {mpath}")
    return result


if __name__ == "__main__":
    main()
