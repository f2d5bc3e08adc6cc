"""One-time conversion of published metric-network weights to Flax-layout safetensors.

    python -m humandiff.metrics.convert --net lpips --src vgg16-397923af.pth vgg.pth \
        --out weights/lpips_vgg.safetensors --allow-pickle
    python -m humandiff.metrics.convert --net inception --src pt_inception-2015-12-05-6726825d.pth \
        --out weights/inception_fid.safetensors --allow-pickle
    python -m humandiff.metrics.convert --net i3d --src i3d_pretrained_400.pt --out weights/i3d_400.safetensors \
        --allow-pickle
    python -m humandiff.metrics.convert --net r3d50 --src resnet-50-kinetics.pth \
        --out weights/r3d50_kinetics.safetensors --allow-pickle

Pickle files (`.pth`, `.pt`) are read only with `--allow-pickle`, through `torch.load(weights_only=True)`;
`--torchscript` reads a TorchScript archive with `torch.jit.load` instead (its state dict must use the same names).
`.safetensors` sources need neither. The converted file is checked against the Flax module before it is written.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from humandiff import cli
from humandiff.metrics import weights
from humandiff.weights import io


def build_net(net: str):
    """The Flax module and a shape-only example input for `net`."""
    # pylint: disable=import-outside-toplevel
    if net == "lpips":
        from humandiff.metrics.lpips import LPIPS

        x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        return LPIPS(), (x, x)
    if net == "inception":
        from humandiff.metrics.inception import InceptionV3FID

        return InceptionV3FID(), (jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32),)
    if net == "i3d":
        from humandiff.metrics.i3d import InceptionI3d

        return InceptionI3d(), (jax.ShapeDtypeStruct((1, 16, 32, 32, 3), jnp.float32),)
    if net == "r3d50":
        from humandiff.metrics.r3d import ResNet3D50

        return ResNet3D50(), (jax.ShapeDtypeStruct((1, 16, 32, 32, 3), jnp.float32),)
    raise ValueError(f"unknown --net {net!r}; expected one of {sorted(weights.WEIGHT_FILES)}")


def _read_torchscript(path: str) -> dict[str, np.ndarray]:
    import torch  # pylint: disable=import-outside-toplevel

    try:
        module = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise io.WeightsError(f"could not read TorchScript file {path}: {e}") from e
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def read_sources(paths: Sequence[str], *, allow_pickle: bool, torchscript: bool) -> dict[str, np.ndarray]:
    """Merges the state dicts of every source file; a key found in two files is an error."""
    merged: dict[str, np.ndarray] = {}
    for path in paths:
        if not os.path.isfile(path):
            raise io.WeightsError(f"source weights file not found: {path}")
        state = _read_torchscript(path) if torchscript else io.read_state_dict(path, allow_pickle=allow_pickle)
        clash = sorted(set(state) & set(merged))
        if clash:
            raise io.WeightsError(f"{path} repeats keys already read from another source: {clash[:5]}")
        merged.update(state)
    return merged


def convert(net: str, sources: Sequence[str], out: str, *, allow_pickle: bool = False,
            torchscript: bool = False) -> dict[str, np.ndarray]:
    """Converts `sources` to the Flax layout of `net`, validates names/shapes, writes `out`; returns the arrays."""
    module, example = build_net(net)
    flat = weights.torch_to_flax(read_sources(sources, allow_pickle=allow_pickle, torchscript=torchscript), net)
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *example)
    expected = {k: tuple(v.shape) for k, v in io.flatten(shapes["params"]).items()}
    io.validate(expected, {k: tuple(v.shape) for k, v in flat.items()}, ", ".join(sources))
    weights.save_flax(flat, out)
    return flat


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.ArgumentParser(prog="python -m humandiff.metrics.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", required=True, choices=sorted(weights.WEIGHT_FILES))
    parser.add_argument("--src", required=True, nargs="+", help="published weight file(s); lpips takes two")
    parser.add_argument("--out", required=True, help="output .safetensors (name it as in the table of weights.py)")
    parser.add_argument("--allow-pickle", action="store_true", help="read .pth/.pt with torch.load(weights_only)")
    parser.add_argument("--torchscript", action="store_true", help="read the source with torch.jit.load")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    with cli.errors(args.debug):
        cli.refuse_existing([args.out], args.overwrite)
        flat = convert(args.net, args.src, args.out, allow_pickle=args.allow_pickle, torchscript=args.torchscript)
    expected = weights.WEIGHT_FILES[args.net]
    print(f"wrote {len(flat)} arrays to {args.out}")
    if os.path.basename(args.out) != expected:
        print(f"note: `humandiff.evaluate --weights DIR` looks for {expected}; rename the file to that name")


if __name__ == "__main__":
    main()
