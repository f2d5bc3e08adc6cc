r"""Export a training checkpoint to a diffusers-layout folder that PyTorch runs.

    python -m humandiff.export --checkpoint WORKDIR --out DIR [--ema] [--dtype fp16|bf16|fp32] [--overwrite] \
        [--config configs/X.py[:args]] [--step N]

CKPT: a training workdir (its latest step), `WORKDIR/checkpoints`, or `WORKDIR/checkpoints/<step>`. The model is
described by `WORKDIR/config.json`, or by --config (the config the run was trained with). DIR receives `unet/`,
`pose_encoder/`, `scheduler/`, `vae/` / `image_encoder/` when the model has them, motion modules (video models),
`model_index.json` and a `README.md` card; see `humandiff.checkpoints.export`. Run the result in PyTorch with
`humandiff.torch_scd.load_pipeline(DIR)`, or in JAX with `python -m humandiff.sample --checkpoint DIR ...`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from humandiff import cli
from humandiff.checkpoints.export import DTYPES, check_dtype


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    p = cli.ArgumentParser(prog="python -m humandiff.export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="training workdir, its checkpoints/ or checkpoints/<step>")
    p.add_argument("--out", required=True, help="output folder (diffusers layout)")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--dtype", default="fp32", help=f"weight dtype: {' | '.join(DTYPES)} (default fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--config", default=None, help="training config file[:args] (default: WORKDIR/config.json)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0, or exits 2 with one error line on bad input (`humandiff.cli`)."""
    args = parse_args(argv)
    with cli.errors(args.debug):
        check_dtype(args.dtype)  # cheap checks before anything slow is imported
        from humandiff.checkpoints import export  # noqa: PLC0415

        export.check_out(args.out, args.overwrite, export.resolve_checkpoint(args.checkpoint, args.step)[0])
        t0 = time.perf_counter()
        trained = export.read_checkpoint(args.checkpoint, config=args.config, ema=args.ema, step=args.step)
        written = export.write_export(trained, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"exported step {trained.step} ({'EMA' if args.ema else 'raw'}, {args.dtype}) to {args.out}: "
          f"{', '.join(written)} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
