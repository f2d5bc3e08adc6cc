"""transformers CLIP image encoder <-> humandiff Flax params: key map both ways, loading, export.

The key map is rule-based and exact (`torch_to_flax_key` / `flax_to_torch_key`):

    vision_model.encoder.layers.3.mlp.fc1.weight  <->  vision_model/encoder/layers_3/mlp/fc1/kernel   (transposed)
    vision_model.embeddings.patch_embedding.weight <-> .../patch_embedding/kernel  (OIHW <-> HWIO)
    vision_model.embeddings.position_embedding.weight <-> .../position_embedding/embedding
    vision_model.pre_layrnorm.weight              <->  vision_model/pre_layrnorm/scale
    vision_model.embeddings.class_embedding       <->  vision_model/embeddings/class_embedding
    visual_projection.weight                      <->  visual_projection/kernel                        (transposed)

A folder may hold a `CLIPVisionModelWithProjection` (the `image_encoder/` of SD image-variation and IP-Adapter
checkpoints) or a full `CLIPModel`; for the latter the text tower and `logit_scale` are skipped. Old
checkpoints that stored the `position_ids` buffer load too (the buffer is skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from humandiff.models.clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection
from humandiff.weights import io

WEIGHTS_NAME = "model.safetensors"
_NORMS = ("pre_layrnorm", "post_layernorm", "layer_norm1", "layer_norm2")
# Keys a transformers CLIP file may hold that the vision encoder does not use.
_SKIPPED_PREFIXES = ("text_model.", "text_projection.", "logit_scale")
_SKIPPED_SUFFIXES = (".position_ids",)


def _kind(module: str) -> str:
    """How a module's `weight` is stored: conv, embedding, norm or linear."""
    if module == "patch_embedding":
        return "conv"
    if module == "position_embedding":
        return "embedding"
    if module in _NORMS:
        return "norm"
    return "linear"


_FLAX_WEIGHT_NAME = {"conv": "kernel", "embedding": "embedding", "norm": "scale", "linear": "kernel"}


def torch_to_flax_key(key: str) -> str:
    """Maps a transformers state-dict key to a `/`-joined Flax param path."""
    parts = key.split(".")
    out = []
    i = 0
    while i < len(parts):
        if parts[i] == "layers" and i + 1 < len(parts) and parts[i + 1].isdigit():
            out.append(f"layers_{parts[i + 1]}")
            i += 2
            continue
        out.append(parts[i])
        i += 1
    if out[-1] == "weight" and len(out) > 1:
        out[-1] = _FLAX_WEIGHT_NAME[_kind(out[-2])]
    return "/".join(out)


def flax_to_torch_key(path: str) -> str:
    """Maps a `/`-joined Flax param path to its transformers state-dict key."""
    parts = path.split("/")
    if len(parts) > 1 and parts[-1] in ("kernel", "embedding", "scale"):
        parts[-1] = "weight"
    out = []
    for part in parts:
        if part.startswith("layers_") and part[len("layers_") :].isdigit():
            out.extend(["layers", part[len("layers_") :]])
        else:
            out.append(part)
    return ".".join(out)


def _module_of(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if len(parts) > 1 else ""


def _to_flax_array(key: str, value: np.ndarray) -> np.ndarray:
    kind = _kind(_module_of(key)) if key.endswith(".weight") else "plain"
    if kind == "conv":
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if kind == "linear":
        return np.transpose(value)
    return value


def _to_torch_array(key: str, value: np.ndarray) -> np.ndarray:
    kind = _kind(_module_of(key)) if key.endswith(".weight") else "plain"
    if kind == "conv":
        return np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
    if kind == "linear":
        return np.transpose(value)
    return value


def expected_torch_shapes(config: CLIPVisionConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key the encoder needs, with its torch shape (from `jax.eval_shape`, no allocation)."""
    module = CLIPVisionModelWithProjection(config)
    dummy = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), dummy)["params"]
    out = {}
    for path, leaf in io.flatten(shapes).items():
        key = flax_to_torch_key(path)
        out[key] = _to_torch_array(key, np.empty(leaf.shape, np.int8)).shape
    return out


def state_dict_to_params(
    state_dict: Mapping[str, np.ndarray],
    config: CLIPVisionConfig,
    source: str = "state dict",
    param_dtype: Any = jnp.float32,
) -> dict[str, Any]:
    """Converts a transformers CLIP state dict to Flax params for `CLIPVisionModelWithProjection(config)`.

    Args:
      state_dict: torch key -> numpy array (text-tower keys and `position_ids` buffers are skipped).
      config: the encoder architecture.
      source: file/folder named in error messages.
      param_dtype: dtype of the returned params.

    Returns:
      Nested params dict (numpy arrays) for `module.apply({"params": params}, ...)`.

    Raises:
      WeightsError: listing every missing / unexpected key and shape mismatch by torch name.
    """
    used = {
        k: np.asarray(v)
        for k, v in state_dict.items()
        if not (k.startswith(_SKIPPED_PREFIXES) or k.endswith(_SKIPPED_SUFFIXES))
    }
    io.validate(expected_torch_shapes(config), {k: v.shape for k, v in used.items()}, source)
    flat = {torch_to_flax_key(k): _to_flax_array(k, v).astype(param_dtype) for k, v in used.items()}
    return io.unflatten(flat)


def image_encoder_to_torch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Exports Flax params to a transformers `CLIPVisionModelWithProjection` state dict.

    Args:
      params: the encoder's params (the `"params"` collection).

    Returns:
      torch key -> contiguous numpy array, loadable with `load_state_dict(..., strict=True)` after
      `torch.from_numpy`, or writable with `safetensors.numpy.save_file`.
    """
    out = {}
    for path, value in io.flatten(params).items():
        key = flax_to_torch_key(path)
        out[key] = np.ascontiguousarray(_to_torch_array(key, np.asarray(value)))
    return out


def load_config(path: str) -> CLIPVisionConfig:
    """Reads the encoder architecture from a transformers `config.json` (file or folder)."""
    config_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    return CLIPVisionConfig.from_dict(io.read_config(config_path), source=config_path)


def load_image_encoder(
    path: str,
    *,
    allow_pickle: bool = False,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    attention_impl: str = "auto",
) -> tuple[CLIPVisionModelWithProjection, dict[str, Any]]:
    """Loads a transformers CLIP image encoder folder (`config.json` + `model.safetensors`).

    Nothing is downloaded. Pickle weights (`pytorch_model.bin`) are refused unless `allow_pickle` is set.

    Args:
      path: folder in transformers layout (e.g. a diffusers pipeline's `image_encoder/`).
      allow_pickle: opt in to pickle weight files (read with `torch.load(weights_only=True)`).
      dtype: compute dtype of the module.
      param_dtype: dtype of the returned params.
      attention_impl: attention implementation for the module.

    Returns:
      `(module, params)`: `module.apply({"params": params}, pixels)` gives a `CLIPVisionOutput`.

    Raises:
      WeightsError: for a missing folder/file, malformed JSON, or weights that do not match the config.
      ValueError: for a config value the encoder does not support (the message names the key).
    """
    if not os.path.isdir(path):
        raise io.WeightsError(f"image encoder folder not found: {path}")
    config = load_config(path)
    state_dict = io.read_state_dict(path, allow_pickle=allow_pickle)
    params = state_dict_to_params(state_dict, config, source=path, param_dtype=param_dtype)
    module = CLIPVisionModelWithProjection(config, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl)
    return module, params


def save_image_encoder(path: str, config: CLIPVisionConfig, params: Mapping[str, Any]) -> None:
    """Writes `config.json` + `model.safetensors` that transformers' `from_pretrained` loads.

    Args:
      path: output folder (created if needed).
      config: the encoder architecture.
      params: the encoder's params.
    """
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    state_dict = {k: v.astype(np.float32) for k, v in image_encoder_to_torch(params).items()}
    save_file(state_dict, os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
