"""Load diffusers UNet / VAE folders into humandiff modules and export them back (torch state dicts).

A diffusers folder holds `config.json` and `*.safetensors` (pickle only with `allow_pickle=True`). Loading builds
the module from the config, derives the parameter shapes with `jax.eval_shape` (nothing allocated), maps the
torch state dict with `humandiff.weights.keymap`, and validates names and shapes, raising one error that lists
every missing / unexpected / mismatched key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from humandiff.models.unet import UNET_FIELDS, UNet2DConditionModel
from humandiff.models.vae import AutoencoderKL
from humandiff.weights import io, keymap
from humandiff.weights.keymap import to_state_dict
from humandiff.weights.motion import read_motion_adapter

# Old diffusers VAE attention names -> current ones.
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def param_shapes(module: Any, *args: Any, **kwargs: Any) -> dict[str, tuple[int, ...]]:
    """Flat `{"a/b/kernel": shape}` of a module's params via `jax.eval_shape` (no allocation)."""
    tree = jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a, **kwargs), *args)
    return {k: tuple(v.shape) for k, v in io.flatten(tree["params"]).items()}


def unet_param_shapes(module: UNet2DConditionModel) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a UNet (dummy input just large enough for every level)."""
    side = 2 ** (len(module.block_out_channels) - 1)
    sample = jax.ShapeDtypeStruct((1, side, side, module.in_channels), jnp.float32)
    context = jax.ShapeDtypeStruct((1, 1, module.cross_attention_dim), jnp.float32)
    return param_shapes(module, sample, jax.ShapeDtypeStruct((1,), jnp.float32), context)


def vae_param_shapes(module: AutoencoderKL) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of an AutoencoderKL (through encode and decode)."""
    side = 2 ** (len(module.block_out_channels) - 1)
    x = jax.ShapeDtypeStruct((1, side, side, module.in_channels), jnp.float32)
    return param_shapes(module, x, jax.ShapeDtypeStruct((2,), jnp.uint32), method=module.init_all)


def _upgrade_legacy(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in _LEGACY_ATTN and "attentions" in parts:
            key = ".".join(parts[:-2] + [_LEGACY_ATTN[parts[-2]], parts[-1]])
            if value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def params_from_state_dict(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                           source: str, prefix: str = "") -> dict[str, Any]:
    """Maps a torch state dict to a validated float32 Flax params tree.

    Args:
      state: torch-named arrays.
      expected: flat Flax name -> shape the module needs.
      source: file or folder, named in errors.
      prefix: only keys under this prefix are used (stripped), e.g. "controlnet_cond_embedding.".

    Returns:
      Nested params dict of float32 jax arrays.
    """
    state = _upgrade_legacy(state)
    flat = keymap.state_dict_to_flat_flax(state, prefix)
    # Errors name each key as the file spells it (a key it lacks: as diffusers would), then ours.
    torch_names = {keymap.torch_key_to_flax(k[len(prefix):], np.ndim(v)): k for k, v in state.items()
                   if k.startswith(prefix)}
    io.validate(expected, {k: v.shape for k, v in flat.items()}, source,
                spell=lambda k: torch_names.get(k, prefix + keymap.flax_key_to_torch(k)))
    return io.unflatten({k: jnp.asarray(np.asarray(v, np.float32)) for k, v in flat.items()})


unet_to_torch = to_state_dict
vae_to_torch = to_state_dict


def load_unet(path: str, *, motion_adapter: str | None = None, allow_pickle: bool = False,
              **overrides: Any) -> tuple[UNet2DConditionModel, dict]:
    """Loads a diffusers `UNet2DConditionModel` folder (e.g. `<sd15>/unet`), optionally with motion modules.

    Args:
      path: folder with `config.json` and `diffusion_pytorch_model*.safetensors`.
      motion_adapter: optional diffusers `MotionAdapter` folder or original AnimateDiff motion-module file; the
        UNet is then built with `motion_modules=True` and the adapter's motion fields.
      allow_pickle: opt in to `.bin/.ckpt` weights (read with `torch.load(weights_only=True)`).
      **overrides: humandiff fields (attention_impl, interaction, pose_injection, dtype, remat, motion_*).

    Returns:
      `(module, params)`.
    """
    config = io.read_config(path)
    state = io.read_state_dict(path, allow_pickle=allow_pickle)
    source = path
    if motion_adapter is not None:
        fields, motion_state = read_motion_adapter(motion_adapter, allow_pickle=allow_pickle)
        adapter = fields.pop("_adapter_config", {})
        for key, unet_key in (("motion_norm_num_groups", "norm_num_groups"), ("block_out_channels",) * 2,
                              ("motion_layers_per_block", "layers_per_block")):  # the adapter must fit this UNet
            if key in adapter and unet_key in config and adapter[key] != config[unet_key]:
                raise io.WeightsError(f"{motion_adapter}: {key}={adapter[key]} differs from the UNet's "
                                      f"{unet_key}={config[unet_key]} ({path})")
        overrides = {"motion_modules": True, **fields, **overrides}
        state = {**state, **motion_state}
        source = f"{path} + {motion_adapter}"
    module = UNet2DConditionModel.from_config(config, source=os.path.join(path, "config.json"), **overrides)
    return module, params_from_state_dict(state, unet_param_shapes(module), source)


def load_vae(path: str, *, allow_pickle: bool = False, **overrides: Any) -> tuple[AutoencoderKL, dict]:
    """Loads a diffusers `AutoencoderKL` folder (e.g. `<sd15>/vae`); returns `(module, params)`."""
    config = io.read_config(path)
    module = AutoencoderKL.from_config(config, source=os.path.join(path, "config.json"), **overrides)
    state = io.read_state_dict(path, allow_pickle=allow_pickle)
    return module, params_from_state_dict(state, vae_param_shapes(module), path)


def unet_config(module: UNet2DConditionModel) -> dict[str, Any]:
    """diffusers `config.json` dict for a humandiff UNet (the inverse of `UNet2DConditionModel.from_config`)."""
    config: dict[str, Any] = {"_class_name": "UNet2DConditionModel"}
    for key in UNET_FIELDS:
        value = getattr(module, key)
        config[key] = list(value) if isinstance(value, tuple) else value
    return config


def save_unet(path: str, module: UNet2DConditionModel, params: Mapping[str, Any]) -> None:
    """Writes `config.json` + `diffusion_pytorch_model.safetensors` that diffusers' `from_pretrained` reads.

    Motion modules, if any, are left out (write them with `humandiff.weights.motion.save_motion_adapter`).
    """
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(unet_config(module), f, indent=2)
    spatial = io.unflatten({k: v for k, v in io.flatten(params).items() if "/motion_modules_" not in k})
    save_file(to_state_dict(spatial), os.path.join(path, "diffusion_pytorch_model.safetensors"))
