"""Logical axis names for every parameter dimension, read from the parameter's path and shape.

Each dimension of each parameter gets a name saying what it is; `config.sharding.logical_rules` then maps names to
mesh axes (`humandiff.training.sharding.logical_spec`). Names come from the Flax layout of our modules (diffusers-
and transformers-style module names), computed on `jax.eval_shape` output, so no model code carries sharding
annotations and nothing is allocated to find them.

Vocabulary (`config_lib.LOGICAL_AXES`):

| name | dimension |
|---|---|
| `conv_h`, `conv_w` | spatial taps of a conv kernel `[kh, kw, in, out]` |
| `conv_in`, `conv_out` | input / output channels of a conv kernel (a conv bias is `conv_out`) |
| `embed` | width into / out of a Dense layer (attention and MLP input, `to_out`/MLP output, CLIP hidden) |
| `heads` | concatenated `heads * head_dim` of q/k/v outputs and the `to_out` input |
| `mlp` | feed-forward hidden width (GEGLU `proj` output, `net_2` input, CLIP `fc1`/`fc2`) |
| `temb` | time-embedding width (`time_embedding/linear_*` outputs, `time_emb_proj` input) |
| `norm` | GroupNorm / LayerNorm `scale` and `bias` |
| `pos` | positions of a learned position embedding (CLIP `position_embedding`) |

A Dense bias takes the name of its kernel's output dimension. Unknown layouts: a 2-D kernel whose module is not in
`DENSE_AXES`, or any other parameter of rank >= 2 not covered here, is an error naming the path (a wrong guess would
shard silently badly); an unknown 1-D vector is left unnamed (replicated, never wrong, only unsharded) and listed
by `unnamed_vectors` in the start-up log.
"""

from __future__ import annotations

from typing import Mapping, Sequence

Names = tuple  # tuple[str | None, ...], one entry per dimension (None: unnamed, never sharded)

CONV_KERNEL = ("conv_h", "conv_w", "conv_in", "conv_out")
DENSE_AXES: dict[str, tuple[str, str]] = {  # Dense module name -> (input, output) names of its [in, out] kernel
    "to_q": ("embed", "heads"), "to_k": ("embed", "heads"), "to_v": ("embed", "heads"),  # UNet/VAE/motion attention
    "q_proj": ("embed", "heads"), "k_proj": ("embed", "heads"), "v_proj": ("embed", "heads"),  # CLIP attention
    "to_out_0": ("heads", "embed"), "out_proj": ("heads", "embed"),
    "proj": ("embed", "mlp"), "fc1": ("embed", "mlp"),  # GEGLU input projection (value and gate) / CLIP MLP
    "net_2": ("mlp", "embed"), "fc2": ("mlp", "embed"),
    "proj_in": ("embed", "embed"), "proj_out": ("embed", "embed"),  # linear-projection transformers, motion modules
    "linear_1": ("embed", "temb"), "linear_2": ("temb", "temb"),  # UNet time embedding MLP
    "time_emb_proj": ("temb", "conv_out"),  # ResNet: time embedding -> channels
    "visual_projection": ("embed", "embed"),  # CLIP image-embedding head
}


class LogicalAxesError(ValueError):
    """A parameter whose layout has no logical axis names."""


def leaf_axes(path: str, shape: Sequence[int], kernel_ndim: int | None = None) -> Names:
    """Logical names of one parameter's dimensions.

    Args:
      path: parameter path, "unet/down_blocks_0/attentions_0/transformer_blocks_0/attn1/to_q/kernel" (optimizer
        and EMA paths work too: only the last two components are read).
      shape: the parameter's shape.
      kernel_ndim: rank of the sibling `kernel` in the same module, if there is one (names a bias).

    Returns:
      One name per dimension; None for an unknown 1-D vector (replicated).

    Raises:
      LogicalAxesError: a kernel, embedding or any rank >= 2 parameter with no known layout.
    """
    parts = path.split("/")
    leaf, module = parts[-1], (parts[-2] if len(parts) > 1 else "")
    rank = len(shape)
    if rank == 0:
        return ()
    if leaf == "kernel" and rank == 4:
        return CONV_KERNEL
    if leaf == "kernel" and rank == 2 and module in DENSE_AXES:
        return DENSE_AXES[module]
    if leaf == "embedding" and rank == 2 and "position" in module:
        return ("pos", "embed")
    if rank == 1:
        return _vector_axes(leaf, module, kernel_ndim)
    raise LogicalAxesError(
        f"parameter {path!r} with shape {tuple(shape)}: no logical axis names for a {module!r} {leaf!r} of rank "
        f"{rank}; add the module's layout to humandiff.training.logical_axes.DENSE_AXES (or use "
        f"config.sharding.mode='regex')")


def _vector_axes(leaf: str, module: str, kernel_ndim: int | None) -> Names:
    # Norm modules: norm, norm1, group_norm, layer_norm1, conv_norm_out, pre_layrnorm, post_layernorm.
    if leaf == "scale" or (leaf == "bias" and kernel_ndim is None and "norm" in module):
        return ("norm",)
    if leaf == "bias" and kernel_ndim == 4:
        return ("conv_out",)
    if leaf == "bias" and kernel_ndim == 2 and module in DENSE_AXES:
        return (DENSE_AXES[module][1],)
    if leaf == "class_embedding":
        return ("embed",)
    return (None,)


def tree_axes(shapes: Mapping[str, Sequence[int]]) -> dict[str, Names]:
    """`{path: names}` for every leaf of a flattened parameter (or optimizer/EMA state) tree.

    Args:
      shapes: `{path: shape}` of every leaf (paths as `humandiff.training.sharding.path_str` writes them).

    Returns:
      Logical names per leaf path; a bias is named after the `kernel` next to it.
    """
    out = {}
    for path, shape in shapes.items():
        kernel = shapes.get(path.rpartition("/")[0] + "/kernel")
        out[path] = leaf_axes(path, shape, None if kernel is None else len(kernel))
    return out


def unnamed_vectors(axes: Mapping[str, Names]) -> list[str]:
    """Paths of 1-D parameters left unnamed (replicated by every rule table), for the start-up log."""
    return [p for p, names in axes.items() if names == (None,)]
