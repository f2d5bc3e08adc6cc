"""Pose-encoder weights: torch <-> Flax, and initialisation from a ControlNet's conditioning embedding.

ControlNet-openpose stores a `ControlNetConditioningEmbedding` under `controlnet_cond_embedding.*` with the same
layer names as `humandiff.models.pose_encoder.PoseEncoder`. As in AnimateAnyone, its `conv_out` is NOT copied by
default: the encoder's output conv stays zero so that training starts from the unchanged UNet.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from humandiff.models.pose_encoder import PoseEncoder
from humandiff.weights import io
from humandiff.weights.diffusers import param_shapes, params_from_state_dict
from humandiff.weights.keymap import to_state_dict

CONTROLNET_PREFIX = "controlnet_cond_embedding."


def pose_encoder_shapes(module: PoseEncoder) -> dict[str, tuple[int, ...]]:
    """Flat parameter shapes of a pose encoder."""
    side = module.downsample_factor
    return param_shapes(module, jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))


def pose_encoder_to_torch(params: Any, prefix: str = "") -> dict:
    """Flax pose-encoder params -> torch state dict (`conv_in.weight`, `blocks.0.weight`, ...)."""
    return to_state_dict(params, prefix)


def load_pose_encoder_from_controlnet(path: str, *, out_channels: int = 320, keep_conv_out: bool = False,
                                      allow_pickle: bool = False, **fields: Any) -> tuple[PoseEncoder, dict]:
    """Builds a `PoseEncoder` initialised from a diffusers ControlNet folder or weight file.

    Args:
      path: ControlNet folder (config.json + safetensors) or a weight file.
      out_channels: encoder output channels (320: conv_in injection; latent channels: input injection).
      keep_conv_out: also copy the ControlNet's `conv_out` (only when shapes agree); default keeps it zero.
      allow_pickle: opt in to pickle weight files.
      **fields: other `PoseEncoder` fields (e.g. dtype).

    Returns:
      `(module, params)`.
    """
    if fields.get("coord_channels"):
        raise ValueError(f"{path}: a ControlNet's conditioning embedding reads the 3 pose channels, but "
                         "coord_channels=True makes the pose encoder read 5: load with coord_channels=False")
    block_out_channels = (16, 32, 96, 256)
    config_path = os.path.join(path, "config.json") if os.path.isdir(path) else None
    if config_path and os.path.isfile(config_path):
        config = io.read_config(config_path)
        block_out_channels = tuple(config.get("conditioning_embedding_out_channels", block_out_channels))
    module = PoseEncoder(out_channels, block_out_channels, **fields)
    state = io.read_state_dict(path, allow_pickle=allow_pickle)
    state = {k: v for k, v in state.items() if k.startswith(CONTROLNET_PREFIX)}
    if not state:
        raise io.WeightsError(f"no '{CONTROLNET_PREFIX}*' weights in {path}; is it a ControlNet checkpoint?")
    expected = pose_encoder_shapes(module)
    if not keep_conv_out:
        state = {k: v for k, v in state.items() if ".conv_out." not in k}
        expected = {k: v for k, v in expected.items() if not k.startswith("conv_out/")}
    params = params_from_state_dict(state, expected, path, prefix=CONTROLNET_PREFIX)
    if not keep_conv_out:
        kernel = pose_encoder_shapes(module)["conv_out/kernel"]
        params["conv_out"] = {"kernel": jnp.zeros(kernel), "bias": jnp.zeros((out_channels,))}
    return module, params
