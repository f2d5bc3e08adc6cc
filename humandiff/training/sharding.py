"""Device mesh and shardings, as config data.

The mesh has axes `(data, fsdp, tensor)` with the shape from `config.mesh.shape` (one -1 takes the remaining
devices). Parameter shardings are computed on `jax.eval_shape` output, so nothing is allocated before they are
known, in one of two modes (`config.sharding.mode`):

- `logical` (default): every parameter dimension has a logical name (`humandiff.training.logical_axes`: conv_out,
  embed, heads, mlp, ...) and `config.sharding.logical_rules`, `(logical_name, mesh_axis | None)` pairs, map names
  to mesh axes. Rules are tried in order; a rule shards the first not-yet-sharded dimension with its name over its
  axis when that axis is unused by the parameter, has size > 1, and divides the dimension (a later rule for the
  same name is the fallback, e.g. conv_in when conv_out is not divisible). `(name, None)` documents a replicated
  name.
- `regex`: rules over parameter paths (`"unet/down_blocks_0/resnets_0/conv1/kernel"`) pick a coarse strategy
  (`config.sharding.rules`, first match wins):
  - `fsdp`: shard the largest dimension divisible by the fsdp axis size over `fsdp` (replicated otherwise);
  - `tensor`: shard the last dimension over `tensor` when divisible, and the largest other divisible dimension
    over `fsdp`;
  - `replicate`: replicated.

In both modes leaves smaller than `config.sharding.min_size` elements are replicated, and optimizer and EMA states
get the sharding of the parameter they mirror (same path suffix, same shape). Batches are sharded on their leading
dimension over `(data, fsdp)`.

Attention kernels XLA cannot partition (Pallas splash) run inside `jax.shard_map` over the mesh axes that
`attention_config` names: the batch over `(data, fsdp)`, the heads over the axis the rules give the attention heads.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from humandiff import config_lib
from humandiff.ops.attention_config import DEFAULT_CONFIG, AttentionConfig
from humandiff.training import logical_axes

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


def logical_spec(names: Sequence[str | None], shape: Sequence[int], rules: Sequence[tuple[str, str | None]],
                 mesh_sizes: Mapping[str, int], min_size: int = 0) -> P:
    """The PartitionSpec the logical rules give one parameter.

    Args:
      names: logical name per dimension (`logical_axes.leaf_axes`).
      shape: parameter shape.
      rules: `(logical_name, mesh_axis | None)` pairs, tried in order.
      mesh_sizes: axis name -> size.
      min_size: leaves with fewer elements are replicated.

    Returns:
      A PartitionSpec with one entry per dimension (None = not sharded). A mesh axis appears at most once; a
      dimension is only sharded over an axis of size > 1 that divides it.
    """
    spec: list[Any] = [None] * len(shape)
    if not shape or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P(*spec)
    used: set[str] = set()
    for logical, axis in rules:
        if axis is None or axis in used or mesh_sizes[axis] <= 1:
            continue
        for i, name in enumerate(names):
            if name == logical and spec[i] is None and shape[i] % mesh_sizes[axis] == 0:
                spec[i] = axis
                used.add(axis)
                break
    return P(*spec)


def flat_shapes(abstract_tree: Any) -> dict[str, tuple[int, ...]]:
    """`{path: shape}` of every leaf."""
    return {path_str(p): tuple(getattr(x, "shape", ())) for p, x in
            jax.tree_util.tree_flatten_with_path(abstract_tree)[0]}


def logical_tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, str | None]],
                           min_size: int = 0) -> Any:
    """NamedShardings for every leaf of an abstract tree, by logical axis names and `rules`.

    Raises:
      logical_axes.LogicalAxesError: a parameter of rank >= 2 whose layout has no names (the path is named).
    """
    sizes = dict(mesh.shape)
    axes = logical_axes.tree_axes(flat_shapes(abstract_tree))

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, logical_spec(axes[path_str(path)], shape, rules, sizes, min_size))

    return jax.tree_util.tree_map_with_path(one, abstract_tree)


def config_shardings(config, abstract_tree: Any, mesh: Mesh) -> Any:
    """Shardings of an abstract tree by `config.sharding` (mode logical or regex, min_size)."""
    c = config.sharding
    if c.mode == "logical":
        return logical_tree_shardings(abstract_tree, mesh, tuple(tuple(r) for r in c.logical_rules), c.min_size)
    return tree_shardings(abstract_tree, mesh, tuple(tuple(r) for r in c.rules), c.min_size)


def head_axis(config) -> str | None:
    """The mesh axis `config.sharding` puts the attention heads on (q/k/v kernels' output width), or None.

    Logical mode: the axis of the first `("heads", axis)` rule. Regex mode: `tensor` when a rule uses the `tensor`
    strategy (it shards a kernel's last dimension, the heads of q/k/v). A batch axis is never a head axis (the
    batch already uses it).
    """
    c = config.sharding
    if c.mode == "logical":
        axis = next((rule[1] for rule in c.logical_rules if rule[0] == "heads" and rule[1] is not None), None)
    else:
        axis = "tensor" if any(strategy == "tensor" for _, strategy in c.rules) else None
    return None if axis in BATCH_AXES else axis


def attention_config(config) -> AttentionConfig:
    """The run's `AttentionConfig`: `model.attention_query_chunk` and the mesh axes splash is shard-mapped over.

    The axes take effect inside a step traced under the mesh (`jax.set_mesh`, as `training.state.lower_step` does);
    elsewhere (no context mesh) splash runs unsharded. The XLA and cuDNN paths are partitioned by XLA and ignore them.
    """
    return AttentionConfig(
        xla_query_chunk=config.model.get("attention_query_chunk", DEFAULT_CONFIG.xla_query_chunk),
        shard_batch_axes=BATCH_AXES, shard_head_axis=head_axis(config))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: leading dimension over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, RNG keys, metrics)."""
    return NamedSharding(mesh, P())


def describe(shardings: Any, abstract_tree: Any, logical: bool = False) -> dict[str, str]:
    """`{path: "shape -> spec"}` (or `"shape names -> spec"` with `logical`) for logging and tests."""
    out = {}
    flat_s = jax.tree_util.tree_flatten_with_path(shardings)[0]
    flat_a = jax.tree_util.tree_leaves(abstract_tree)
    axes = logical_axes.tree_axes(flat_shapes(abstract_tree)) if logical else {}
    for (path, sharding), leaf in zip(flat_s, flat_a):
        key = path_str(path)
        names = f" {axes[key]}" if logical else ""
        out[key] = f"{tuple(leaf.shape)}{names} -> {tuple(sharding.spec)}"
    return out


def summary(config, abstract_params: Any, shardings: Any) -> list[str]:
    """Start-up log lines: totals, then one example parameter per distinct layout (names -> spec).

    Args:
      config: the training config (`config.sharding.mode`).
      abstract_params: abstract parameter tree.
      shardings: its NamedShardings (same structure).
    """
    logical = config.sharding.mode == "logical"
    table = describe(shardings, abstract_params, logical=logical)
    shapes = flat_shapes(abstract_params)
    specs = {path_str(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
    sharded = [p for p, spec in specs.items() if any(a is not None for a in spec)]
    total = sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    part = sum(int(np.prod(shapes[p], dtype=np.int64)) for p in sharded)
    lines = [f"sharding ({config.sharding.mode}): {len(sharded)} of {len(table)} parameters sharded "
             f"({part / max(total, 1):.1%} of {total} scalars); one example per layout:"]
    axes = logical_axes.tree_axes(shapes) if logical else {}
    seen = set()
    for path, desc in table.items():
        layout = axes[path] if logical else tuple(specs[path])
        if layout not in seen:
            seen.add(layout)
            lines.append(f"  {path}: {desc}")
    unnamed = logical_axes.unnamed_vectors(axes)
    if unnamed:
        lines.append(f"  {len(unnamed)} unnamed 1-D parameters, replicated: {unnamed[:8]}")
    return lines
