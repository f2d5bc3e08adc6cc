"""Device mesh and shardings, as config data.

The mesh has axes `(data, fsdp, tensor)` with the shape from `config.mesh.shape` (one -1 takes the remaining
devices). Parameter shardings come from rules over parameter paths (`"unet/down_blocks_0/resnets_0/conv1/kernel"`),
evaluated on `jax.eval_shape` output so nothing is allocated before the shardings are known:

- `fsdp`: shard the largest dimension divisible by the fsdp axis size over `fsdp` (replicated otherwise);
- `tensor`: shard the last dimension over `tensor` when divisible, and the largest other divisible dimension over
  `fsdp`;
- `replicate`: replicated.

The first matching rule wins; leaves smaller than `config.sharding.min_size` elements are replicated. Optimizer
and EMA states get the sharding of the parameter they mirror (same path suffix, same shape). Batches are sharded on
their leading dimension over `(data, fsdp)`.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from humandiff import config_lib

BATCH_AXES = ("data", "fsdp")


def make_mesh(config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the `(data, fsdp, tensor)` mesh from `config.mesh.shape` over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config_lib.mesh_shape(config, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), config_lib.MESH_AXES)


def path_str(path: tuple) -> str:
    """`(DictKey('unet'), DictKey('conv_in'), ...)` -> "unet/conv_in/..." (sequence indices as numbers)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _largest_divisible(shape: Sequence[int], size: int, skip: int | None = None) -> int | None:
    best = None
    for i, dim in enumerate(shape):
        if i != skip and dim % size == 0 and dim >= size and (best is None or dim > shape[best]):
            best = i
    return best


def spec_for(path: str, shape: Sequence[int], rules: Sequence[tuple[str, str]], mesh_sizes: dict[str, int],
             min_size: int = 0) -> P:
    """The PartitionSpec the rules give one parameter.

    Args:
      path: parameter path, "a/b/kernel".
      shape: parameter shape.
      rules: `(regex, strategy)` pairs, first `re.search` match wins; strategy fsdp | tensor | replicate.
      mesh_sizes: axis name -> size.
      min_size: leaves with fewer elements are replicated.

    Returns:
      A PartitionSpec with one entry per dimension (None = not sharded).
    """
    spec: list[Any] = [None] * len(shape)
    if int(np.prod(shape, dtype=np.int64)) < min_size or not shape:
        return P(*spec)
    strategy = "replicate"
    for pattern, rule_strategy in rules:
        if re.search(pattern, path):
            strategy = rule_strategy
            break
    tensor_dim = None
    if strategy == "tensor" and mesh_sizes["tensor"] > 1 and shape[-1] % mesh_sizes["tensor"] == 0:
        tensor_dim = len(shape) - 1
        spec[tensor_dim] = "tensor"
    if strategy in ("fsdp", "tensor") and mesh_sizes["fsdp"] > 1:
        dim = _largest_divisible(shape, mesh_sizes["fsdp"], skip=tensor_dim)
        if dim is not None:
            spec[dim] = "fsdp"
    return P(*spec)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, str]], min_size: int = 0) -> Any:
    """NamedShardings for every leaf of an abstract (eval_shape) tree, by the path rules.

    Optimizer/EMA leaves whose path ends with a parameter path get that parameter's sharding, because the rules
    look at the path suffix (`.../kernel`) and the shape, which they share.
    """
    sizes = dict(mesh.shape)

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, spec_for(path_str(path), shape, rules, sizes, min_size))

    return jax.tree_util.tree_map_with_path(one, abstract_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: leading dimension over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, RNG keys, metrics)."""
    return NamedSharding(mesh, P())


def describe(shardings: Any, abstract_tree: Any) -> dict[str, str]:
    """`{path: "shape -> spec"}` for logging and tests."""
    out = {}
    flat_s = jax.tree_util.tree_flatten_with_path(shardings)[0]
    flat_a = jax.tree_util.tree_leaves(abstract_tree)
    for (path, sharding), leaf in zip(flat_s, flat_a):
        out[path_str(path)] = f"{tuple(leaf.shape)} -> {tuple(sharding.spec)}"
    return out
