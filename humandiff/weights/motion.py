"""AnimateDiff motion-module weights: diffusers `MotionAdapter` folders and the original AnimateDiff layout.

Both name the same tensors; the original layout (`mm_sd_v15_v2.ckpt`) says `temporal_transformer.`,
`attention_blocks.{0,1}`, `norms.{0,1}`, `ff_norm` where diffusers says (nothing), `attn{1,2}`, `norm{1,2}`, `norm3`.
Frame-position tables (`pos_encoder.pe` / `pos_embed.pe`) are fixed sinusoids, not parameters: they are dropped
on load (after a shape check) and regenerated on export. Motion-module parameters live inside the UNet params
(`down_blocks_i/motion_modules_j/...`, `mid_block/motion_modules_0/...`, `up_blocks_i/motion_modules_j/...`).

The original layout has no config: transformer depths and whether a mid-block module exists are read from the
keys (`mm_sd_v15.ckpt` has none, `mm_sd_v15_v2.ckpt` has one).

GroupNorm statistics: both layouts load with diffusers' per-video statistics (`motion_norm="video"`), so that a
model loaded, trained and exported here computes what diffusers computes with the exported adapter. The original
AnimateDiff code that trained `mm_sd_v15*.ckpt` normalised per frame; pass `motion_norm="frame"` to run a file as
that code did (diffusers cannot run such a model: the mode is recorded in exported adapter configs under
`_humandiff_motion_norm`, which diffusers ignores and `read_motion_adapter` restores).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from humandiff import cli
from humandiff.models.temporal import frame_positions
from humandiff.weights import io
from humandiff.weights.keymap import to_state_dict

_ORIGINAL_TO_DIFFUSERS = ((".norms.0", ".norm1"), (".norms.1", ".norm2"), (".ff_norm", ".norm3"),
                          (".attention_blocks.0", ".attn1"), (".attention_blocks.1", ".attn2"),
                          (".temporal_transformer", ""))
_POS_KEY = re.compile(r"\.(pos_encoder|pos_embed)\.pe$")
# MotionAdapter config keys -> UNet fields (the others must agree with the UNet or hold the supported value).
_ADAPTER_FIELDS = ("motion_num_attention_heads", "motion_transformer_layers_per_block",
                   "motion_transformer_layers_per_mid_block", "motion_max_seq_length", "use_motion_mid_block")
_NORM_KEY = "_humandiff_motion_norm"  # MotionAdapter config key recording humandiff's GroupNorm mode
_BLOCK_KEY = re.compile(r"^(down_blocks\.(\d+)|mid_block|up_blocks\.\d+)\.motion_modules\.\d+\..*"
                        r"transformer_blocks\.(\d+)\.")


def original_to_diffusers(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Original AnimateDiff motion-module names -> diffusers names (position tables dropped)."""
    out = {}
    for key, value in state.items():
        if _POS_KEY.search(key):
            continue
        for old, new in _ORIGINAL_TO_DIFFUSERS:
            key = key.replace(old, new)
        out[key] = value
    return out


def diffusers_to_original(state: Mapping[str, np.ndarray], max_seq_length: int = 32) -> dict[str, np.ndarray]:
    """diffusers motion-module names -> original AnimateDiff names, with `pos_encoder.pe` tables regenerated."""
    out = {}
    for key, value in state.items():
        m = re.match(r"^(.*\.motion_modules\.\d+)\.(.*)$", key)
        if not m or _POS_KEY.search(key):
            continue
        head, rest = m.groups()
        rest = (rest.replace("attn1", "attention_blocks.0").replace("attn2", "attention_blocks.1")
                .replace("norm1", "norms.0").replace("norm2", "norms.1").replace("norm3", "ff_norm"))
        out[f"{head}.temporal_transformer.{rest}"] = value
        block = re.match(r"^(transformer_blocks\.\d+)\.attention_blocks\.(\d)\.to_q\.weight$", rest)
        if block:
            dim = value.shape[0]
            pe = frame_positions(max_seq_length, dim)[None]
            out[f"{head}.temporal_transformer.{block.group(1)}.attention_blocks.{block.group(2)}.pos_encoder.pe"] = pe
    return out


def _drop_positions(state: Mapping[str, np.ndarray], max_seq_length: int, source: str) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        if _POS_KEY.search(key):
            if value.ndim != 3 or value.shape[1] < max_seq_length:
                raise io.WeightsError(f"{source}: {key} has shape {tuple(value.shape)}; expected [1, >= "
                                      f"{max_seq_length}, dim] (motion_max_seq_length={max_seq_length})")
            # Dropping is safe only for the fixed sinusoids; a learned table would be silently lost.
            table = frame_positions(value.shape[1], value.shape[2])[None]
            if not np.allclose(np.asarray(value, np.float32), table, rtol=0, atol=1e-4):
                raise io.WeightsError(f"{source}: {key} is not the sinusoidal frame-position table (max |diff| "
                                      f"{float(np.abs(value - table).max()):.3g}); learned position tables are not "
                                      "supported")
            continue
        out[key] = value
    return out


def _layout_from_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Transformer depth per down level, mid-block depth and presence, read from original-layout keys."""
    down: dict[int, int] = {}
    mid = 0
    for key in state:
        m = _BLOCK_KEY.match(key)
        if not m:
            continue
        depth = int(m.group(3)) + 1
        if m.group(2) is not None:
            down[int(m.group(2))] = max(down.get(int(m.group(2)), 0), depth)
        elif m.group(1) == "mid_block":
            mid = max(mid, depth)
    fields: dict[str, Any] = {"use_motion_mid_block": mid > 0}
    if mid:
        fields["motion_transformer_layers_per_mid_block"] = mid
    if down:
        depths = tuple(down[i] for i in sorted(down))
        fields["motion_transformer_layers_per_block"] = depths[0] if len(set(depths)) == 1 else depths
    return fields


def read_motion_adapter(path: str, *, allow_pickle: bool = False,
                        **fields: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Reads motion-module weights from a MotionAdapter folder or an original-layout file.

    Args:
      path: diffusers `MotionAdapter` folder (config.json + safetensors), or an original AnimateDiff file
        (`mm_sd_v15_v2.ckpt` is a pickle: needs `allow_pickle=True`; a `.safetensors` conversion does not).
      allow_pickle: opt in to pickle files (`torch.load(weights_only=True)`).
      **fields: UNet motion fields for the original layout, which has no config (defaults: 8 heads, 1 layer,
        max_seq_length from the position tables).

    Returns:
      `(unet_fields, state)`: UNet motion fields and the diffusers-named state dict (no position tables).
    """
    if os.path.isdir(path):
        config = io.read_config(path)
        source = os.path.join(path, "config.json")
        unet_fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in _ADAPTER_FIELDS}
        checks = {"motion_mid_block_layers_per_block": 1, "conv_in_channels": None}
        for key, want in checks.items():
            if config.get(key, want) != want:
                raise io.WeightsError(f"{source}: unsupported {key}={config[key]!r} (supported: {want!r})")
        unet_fields["motion_norm"] = config.get(_NORM_KEY, "video")
        unet_fields["_adapter_config"] = config
        state = io.read_state_dict(path, allow_pickle=allow_pickle)
    else:
        raw = io.read_state_dict(path, allow_pickle=allow_pickle)
        if not any(".motion_modules." in k for k in raw):
            raise io.WeightsError(f"{path} holds no '*.motion_modules.*' keys; is it an AnimateDiff motion module?")
        lengths = [v.shape[1] for k, v in raw.items() if _POS_KEY.search(k) and v.ndim == 3]
        unet_fields = {"motion_max_seq_length": min(lengths) if lengths else 32, **_layout_from_keys(raw)}
        state = raw
    unet_fields.update(fields)
    state = _drop_positions(state, unet_fields.get("motion_max_seq_length", 32), path)
    return unet_fields, state if os.path.isdir(path) else original_to_diffusers(state)


def motion_to_torch(params: Mapping[str, Any], *, layout: str = "diffusers",
                    max_seq_length: int = 32) -> dict[str, np.ndarray]:
    """Exports the motion modules of UNet params as a torch state dict.

    Args:
      params: UNet params holding `motion_modules_*` subtrees.
      layout: "diffusers" (MotionAdapter names) or "original" (AnimateDiff `mm_sd_v15_v2` names).
      max_seq_length: length of the regenerated position tables.
    """
    flat = {k: v for k, v in io.flatten(params).items() if "/motion_modules_" in k}
    state = to_state_dict(io.unflatten(flat))
    if layout == "diffusers":
        for key in list(state):
            block = re.match(r"^(.*\.transformer_blocks\.\d+)\.attn1\.to_q\.weight$", key)
            if block:
                state[f"{block.group(1)}.pos_embed.pe"] = frame_positions(max_seq_length, state[key].shape[1])[None]
        return state
    if layout == "original":
        return diffusers_to_original(state, max_seq_length)
    raise ValueError(f"unknown motion-module layout {layout!r}; expected 'diffusers' or 'original'")


def adapter_config(module: Any) -> dict[str, Any]:
    """diffusers `MotionAdapter` config for the motion modules of a UNet module (plus humandiff's norm mode)."""
    heads, depths = module.motion_num_attention_heads, module.motion_transformer_layers_per_block
    return {
        "_class_name": "MotionAdapter",
        "block_out_channels": list(module.block_out_channels),
        "motion_layers_per_block": module.layers_per_block,
        "motion_transformer_layers_per_block": list(depths) if isinstance(depths, (list, tuple)) else depths,
        "motion_mid_block_layers_per_block": 1,
        "motion_transformer_layers_per_mid_block": module.motion_transformer_layers_per_mid_block,
        "motion_num_attention_heads": list(heads) if isinstance(heads, (list, tuple)) else heads,
        "motion_norm_num_groups": module.norm_num_groups,
        "motion_max_seq_length": module.motion_max_seq_length,
        "use_motion_mid_block": module.use_motion_mid_block,
        "conv_in_channels": None,
        _NORM_KEY: module.motion_norm,
    }


def _save_safetensors(state: Mapping[str, np.ndarray], path: str) -> None:
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, path)


def save_motion_adapter(folder: str, module: Any, params: Mapping[str, Any]) -> str:
    """Writes the motion modules as a diffusers `MotionAdapter` folder (`MotionAdapter.from_pretrained` reads it).

    Args:
      folder: output folder (created); gets `config.json` and `diffusion_pytorch_model.safetensors`.
      module: the `UNet2DConditionModel` (motion fields and block layout come from it).
      params: its params (only `motion_modules_*` subtrees are written).

    Returns:
      The folder.
    """
    if not module.motion_modules:
        raise ValueError("save_motion_adapter: the UNet module has motion_modules=False; nothing to export")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(adapter_config(module), f, indent=2, sort_keys=True)
    state = motion_to_torch(params, layout="diffusers", max_seq_length=module.motion_max_seq_length)
    _save_safetensors(state, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    return folder


def save_motion_original(path: str, module: Any, params: Mapping[str, Any]) -> str:
    """Writes the motion modules in the original AnimateDiff key layout as a `.safetensors` file.

    Args:
      path: output file, ending in `.safetensors` (pickle is never written).
      module: the `UNet2DConditionModel` (for `motion_max_seq_length`).
      params: its params.

    Returns:
      The path.
    """
    if not path.endswith(".safetensors"):
        raise ValueError(f"save_motion_original writes safetensors only; got {path!r}")
    state = motion_to_torch(params, layout="original", max_seq_length=module.motion_max_seq_length)
    _save_safetensors(state, path)
    return path


def convert_to_safetensors(src: str, dst: str, *, allow_pickle: bool = False) -> str:
    """Rewrites an original-layout motion-module file (e.g. the pickled `mm_sd_v15_v2.ckpt`) as safetensors.

    The keys and tensors are kept as they are (position tables included), so the result is the same checkpoint
    without pickle; run it once, then point configs at the `.safetensors` file.

    Args:
      src: original-layout file (`.ckpt` / `.pth` need `allow_pickle=True`).
      dst: output `.safetensors` path.
      allow_pickle: opt in to reading a pickle with `torch.load(weights_only=True)`.

    Returns:
      `dst`.
    """
    if not dst.endswith(".safetensors"):
        raise ValueError(f"output must end in .safetensors, got {dst!r}")
    state = io.read_state_dict(src, allow_pickle=allow_pickle)
    if not any(".motion_modules." in k for k in state):
        raise io.WeightsError(f"{src} holds no '*.motion_modules.*' keys; is it an AnimateDiff motion module?")
    _save_safetensors(state, dst)
    return dst


def main(argv: list[str] | None = None) -> None:
    """`python -m humandiff.weights.motion SRC DST [--allow-pickle]`: convert a motion module to safetensors."""
    parser = cli.ArgumentParser(prog="python -m humandiff.weights.motion", description=main.__doc__)
    parser.add_argument("src", help="original AnimateDiff motion-module file (mm_sd_v15_v2.ckpt, ...)")
    parser.add_argument("dst", help="output .safetensors file")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a pickle file (torch.load(weights_only=True)); only for files you trust")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST file")
    args = parser.parse_args(argv)
    with cli.errors(args.debug):
        cli.refuse_existing([args.dst], args.overwrite)
        print(convert_to_safetensors(args.src, args.dst, allow_pickle=args.allow_pickle))


if __name__ == "__main__":
    main()
