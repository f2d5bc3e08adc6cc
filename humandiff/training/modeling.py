"""The module bundle (`humandiff.models.scd.Models`) a run's config describes, and its parameter initialisation.

Parameters live in one nested dict `{"unet", "pose_encoder", "reference_unet"?, "vae"?, "image_encoder"?}` whose
paths are what the trainable/frozen regexes and the sharding rules see ("unet/down_blocks_0/resnets_0/conv1/kernel").
`reference_unet` exists with `model.reference_net="separate"`: the reference pass's own UNet, a copy of the UNet's
spatial parameters at the start (the reference pass runs no motion modules).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from humandiff.models.scd import Models
from humandiff.training import sharding


def reference_net(config) -> str:
    """`config.model.reference_net` ("shared" | "separate"); "shared" for the config.json of a run from before the
    switch existed, so older workdirs still load."""
    return config.model.get("reference_net", "shared")


def compute_dtype(config) -> jnp.dtype:
    """The activation dtype `config.train.compute_dtype` names (parameters stay float32)."""
    return jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else jnp.float32


def build(config, *, vae: nn.Module | None = None,
          image_encoder: nn.Module | None = None) -> tuple[Models, dict[str, Any]]:
    """Builds the modules from `config.model` and loads weights from local folders when configured.

    Args:
      config: the run config.
      vae, image_encoder: modules to use instead of `model.vae_dir` / `model.image_encoder_dir`, initialised
        randomly like the rest (`benchmarks/train_step.py` times SD-1.5 without weight folders this way).

    Returns:
      `(models, pretrained)`: `pretrained` maps top-level names ("unet", "vae", "image_encoder") to host parameter
      trees read from disk; the rest is initialised randomly by `init_params`.
    """
    from humandiff.models.pose_encoder import PoseEncoder
    from humandiff.models.unet import UNet2DConditionModel

    m = config.model
    dtype = compute_dtype(config)
    attention_config = sharding.attention_config(config)  # splash: shard axes of the mesh the step runs under
    scd = dict(attention_impl=m.attention_impl, attention_config=attention_config, interaction=m.interaction,
               pose_injection=m.pose_injection, dtype=dtype, remat=config.train.remat, **dict(m.unet_extra))
    pretrained: dict[str, Any] = {}
    if m.unet_dir:
        from humandiff.weights.diffusers import load_unet
        unet, pretrained["unet"] = load_unet(m.unet_dir, motion_adapter=m.motion_modules_path or None, **scd)
        if reference_net(config) == "separate":  # the reference UNet starts from the same weights
            pretrained["reference_unet"] = reference_init(pretrained["unet"])
    else:
        unet = UNet2DConditionModel(**_plain(m.unet), **scd)
    if vae is None and m.vae_dir:
        from humandiff.weights.diffusers import load_vae
        vae, pretrained["vae"] = load_vae(m.vae_dir)
    if image_encoder is None and m.image_encoder_dir:
        from humandiff.weights.clip import load_image_encoder
        image_encoder, pretrained["image_encoder"] = load_image_encoder(m.image_encoder_dir, dtype=dtype,
                                                                        attention_impl=m.attention_impl)
    pose_channels = unet.block_out_channels[0] if m.pose_injection == "conv_in" else unet.in_channels
    pose_encoder = PoseEncoder(out_channels=pose_channels, dtype=dtype, **_plain(m.pose_encoder))
    models = Models(unet=unet, pose_encoder=pose_encoder, vae=vae, image_encoder=image_encoder)
    if pose_encoder.downsample_factor != models.downscale:
        raise ValueError(f"config.model.pose_encoder.block_out_channels={tuple(m.pose_encoder.block_out_channels)} "
                         f"downsamples {pose_encoder.downsample_factor}x but latents are {models.downscale}x smaller "
                         f"than pixels ({'VAE' if vae is not None else 'pixel space'}): use "
                         f"{int(np.log2(models.downscale)) + 1} stages")
    return models, pretrained


def reference_init(unet_params: dict) -> dict:
    """The separate reference UNet's starting parameters: the UNet's own, without motion modules (the reference
    pass is one image and runs none). The same leaves (not copies): `jit` outputs and device puts copy them."""
    def drop(tree):
        return {k: drop(v) if isinstance(v, Mapping) else v for k, v in tree.items()
                if not k.startswith("motion_modules_")}
    return drop(unet_params)


def _plain(cd) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cd.to_dict().items()}


def dummy_inputs(models: Models, config) -> dict[str, jax.Array]:
    """Smallest inputs with the training shapes' trailing dims (for `init` under `jax.eval_shape`)."""
    h, w = (int(x) for x in config.data.resolution)
    lh, lw = h // models.downscale, w // models.downscale
    return {
        "latent": jnp.zeros((1, lh, lw, models.latent_channels), jnp.float32),
        "pose": jnp.zeros((1, h, w, 3), jnp.float32),
        "context": jnp.zeros((1, 1, models.context_dim), jnp.float32),
        "image": jnp.zeros((1, h, w, 3), jnp.float32),
    }


def init_params(models: Models, config, rng: jax.Array) -> dict[str, Any]:
    """Random parameters for every module (call under `jax.eval_shape` or `jit` with out_shardings)."""
    x = dummy_inputs(models, config)
    k_unet, k_pose, k_vae, k_clip = jax.random.split(rng, 4)
    params = {
        "unet": models.unet.init(k_unet, x["latent"], jnp.zeros((1,), jnp.int32), x["context"])["params"],
        "pose_encoder": models.pose_encoder.init(k_pose, x["pose"])["params"],
    }
    if reference_net(config) == "separate":
        params["reference_unet"] = reference_init(params["unet"])
    if models.vae is not None:
        params["vae"] = models.vae.init(k_vae, x["image"], method=models.vae.encode)["params"]
    if models.image_encoder is not None:
        size = models.image_encoder.config.image_size
        clip = jnp.zeros((1, size, size, models.image_encoder.config.num_channels), jnp.float32)
        params["image_encoder"] = models.image_encoder.init(k_clip, clip)["params"]
    return params


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
