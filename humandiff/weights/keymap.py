"""Generic torch <-> Flax key and layout maps for diffusers-style modules.

Flax names follow diffusers' module paths with "." before an index replaced by "_":
`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight` <->
`down_blocks_0/attentions_0/transformer_blocks_0/attn1/to_q/kernel`. Leaves: conv weight `[O, I, kh, kw]` <->
kernel `[kh, kw, I, O]`; linear weight `[O, I]` <-> kernel `[I, O]`; norm weight <-> scale; bias <-> bias.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from humandiff.weights import io

# Torch names whose own "_<digit>" suffix is part of the name, not an index.
_KEEP_SUFFIX = frozenset({"linear_1", "linear_2"})
_INDEXED = re.compile(r"^(.+)_(\d+)$")


def torch_key_to_flax(key: str, ndim: int) -> str:
    """`a.0.b.weight` -> `a_0/b/kernel|scale` (by the tensor's rank); another leaf is a `WeightsError`."""
    parts = key.split(".")
    *mods, leaf = parts
    path: list[str] = []
    for p in mods:
        if p.isdigit() and path:
            path[-1] = f"{path[-1]}_{p}"
        else:
            path.append(p)
    if leaf == "weight":
        leaf = "scale" if ndim == 1 else "kernel"
    elif leaf != "bias":
        raise io.WeightsError(f"unknown parameter in the weights: {key} ends in {leaf!r}, not weight or bias")
    return "/".join(path + [leaf])


def flax_key_to_torch(key: str) -> str:
    """`a_0/b/kernel` -> `a.0.b.weight`."""
    *mods, leaf = key.split("/")
    out = []
    for p in mods:
        m = _INDEXED.match(p)
        out.append(f"{m.group(1)}.{m.group(2)}" if m and p not in _KEEP_SUFFIX else p)
    out.append("bias" if leaf == "bias" else "weight")
    return ".".join(out)


def torch_to_flax_array(value: np.ndarray) -> np.ndarray:
    """Torch layout -> Flax layout (conv and linear kernels transposed; others unchanged)."""
    if value.ndim == 4:
        return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def flax_to_torch_array(value: np.ndarray) -> np.ndarray:
    """Flax layout -> torch layout (inverse of `torch_to_flax_array`)."""
    if value.ndim == 4:
        return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def state_dict_to_flat_flax(state: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """Torch state dict (optionally only keys under `prefix`, stripped) -> flat Flax dict `{"a/b/kernel": arr}`."""
    out = {}
    for key, value in state.items():
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        value = np.asarray(value)
        out[torch_key_to_flax(key, value.ndim)] = torch_to_flax_array(value)
    return out


def flat_flax_to_state_dict(flat: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """Flat Flax dict -> torch state dict (names and layouts), keys optionally prefixed."""
    return {prefix + flax_key_to_torch(k): flax_to_torch_array(np.asarray(v)) for k, v in flat.items()}


def to_state_dict(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Flax params tree -> torch state dict (numpy, float32), the inverse of
    `humandiff.weights.diffusers.params_from_state_dict`."""
    flat = {k: np.array(v, dtype=np.float32) for k, v in io.flatten(params).items()}  # writable copies
    return flat_flax_to_state_dict(flat, prefix)
