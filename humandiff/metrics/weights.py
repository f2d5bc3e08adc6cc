"""Weight files of the metric networks: names, torch -> Flax conversion, loading with validation.

The published weights are torch files. `python -m humandiff.metrics.convert` turns each into a safetensors file of
Flax-layout arrays (keys like `Mixed_5b/branch1x1/conv/kernel`) once; the evaluator then reads only those.

| metric | `--net` | published source file(s) | converted file in `--weights DIR` |
|---|---|---|---|
| LPIPS | `lpips` | `vgg16-397923af.pth` (torchvision VGG16) + `vgg.pth` (lpips v0.1 linear heads) | `lpips_vgg.safetensors` |
| FID | `inception` | `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid FID Inception) | `inception_fid.safetensors` |
| FVD | `i3d` | `i3d_pretrained_400.pt` (I3D Kinetics-400, as DisCo / VideoGPT / StyleGAN-V) | `i3d_400.safetensors` |
| FID-VID | `r3d50` | `resnet-50-kinetics.pth` (3D-ResNets-PyTorch, shortcut B) | `r3d50_kinetics.safetensors` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from humandiff.weights import io

WEIGHT_FILES = {
    "lpips": "lpips_vgg.safetensors",
    "inception": "inception_fid.safetensors",
    "i3d": "i3d_400.safetensors",
    "r3d50": "r3d50_kinetics.safetensors",
}
SOURCE_FILES = {
    "lpips": "vgg16-397923af.pth vgg.pth",
    "inception": "pt_inception-2015-12-05-6726825d.pth",
    "i3d": "i3d_pretrained_400.pt",
    "r3d50": "resnet-50-kinetics.pth",
}

# Torch tensors that carry no parameter of the Flax ports (classifier heads the metrics never use, counters).
_DROP_SUFFIXES = ("num_batches_tracked",)
_DROP_PREFIXES = {
    "lpips": ("classifier.",),
    "inception": ("fc.", "AuxLogits."),
    "i3d": (),
    "r3d50": ("fc.",),
}


def _flax_leaf(key: str, value: np.ndarray, bn_modules: set[str]) -> tuple[str, np.ndarray]:
    module, _, name = key.rpartition(".")
    path = module.replace(".", "/")
    if module in bn_modules:
        leaf = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}.get(name)
        if leaf is None:
            raise io.WeightsError(f"unexpected batch-norm tensor {key}")
        return f"{path}/{leaf}", value
    if name == "bias":
        return f"{path}/bias", value
    if name != "weight":
        raise io.WeightsError(f"unexpected tensor {key} with shape {value.shape}")
    if value.ndim >= 3:  # conv [O, I, *k] -> [*k, I, O]
        return f"{path}/kernel", np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    if value.ndim == 2:  # linear [O, I] -> [I, O]
        return f"{path}/kernel", value.T
    raise io.WeightsError(f"cannot map 1-D weight {key} (not a batch norm)")


def torch_to_flax(state: Mapping[str, np.ndarray], net: str) -> dict[str, np.ndarray]:
    """Maps a torch state dict of one metric network to flat Flax keys (`a/b/kernel`), transposing convs.

    `module.` prefixes (DataParallel) are stripped; classifier heads the metric does not use are dropped.
    """
    if net not in WEIGHT_FILES:
        raise ValueError(f"unknown metric network {net!r}; expected one of {sorted(WEIGHT_FILES)}")
    clean = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.endswith(_DROP_SUFFIXES) or key.startswith(_DROP_PREFIXES[net]):
            continue
        clean[key] = np.asarray(value, dtype=np.float32)
    bn_modules = {k.rpartition(".")[0] for k in clean if k.endswith("running_mean")}
    return dict(_flax_leaf(k, v, bn_modules) for k, v in clean.items())


def save_flax(flat: Mapping[str, np.ndarray], path: str) -> None:
    """Writes flat Flax-layout arrays to a safetensors file."""
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, path)


def load_params(path: str, module: Any, *example_inputs: Any) -> dict[str, Any]:
    """Reads a converted safetensors file and checks every name and shape against `module`.

    Args:
      path: the converted file.
      module: the Flax module the params are for.
      *example_inputs: arguments (arrays or ShapeDtypeStructs) for a shape-only `module.init`.

    Returns:
      `{"params": ...}` ready for `module.apply`.
    """
    if not os.path.isfile(path):
        raise io.WeightsError(f"weights file not found: {path}")
    flat = io.read_state_dict(path)
    shapes = jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a), *example_inputs)
    expected = {k: tuple(v.shape) for k, v in io.flatten(shapes["params"]).items()}
    io.validate(expected, {k: tuple(v.shape) for k, v in flat.items()}, path)
    return {"params": io.unflatten({k: jax.numpy.asarray(v) for k, v in flat.items()})}
