"""CLIP vision transformer with projection, equivalent to transformers' `CLIPVisionModelWithProjection`.

SCD feeds the CLIP image embedding of the reference image to every cross-attention as a one-token context
(`image_context`). The module mirrors transformers' module tree, so parameter paths map one-to-one onto the
torch state dict (`humandiff.weights.clip`):

    vision_model/embeddings/{patch_embedding, class_embedding, position_embedding}
    vision_model/pre_layrnorm            (sic: the transformers name has this typo)
    vision_model/encoder/layers_{i}/{layer_norm1, self_attn/{q,k,v,out}_proj, layer_norm2, mlp/{fc1, fc2}}
    vision_model/post_layernorm          (applied to the CLS token only)
    visual_projection                    (no bias)

Inputs are NHWC float32, already CLIP-normalised (`preprocess`, defined in `clip_preprocess` and re-exported
here). The encoder is inference-only: dropout values in the config are ignored (the released CLIP models have
none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from humandiff.models.clip_preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, preprocess, resized_shape
from humandiff.ops.attention import attention

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "CLIPVisionConfig",
    "CLIPVisionModelWithProjection",
    "CLIPVisionOutput",
    "image_context",
    "preprocess",
    "resized_shape",
]


ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
_INT_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
)
_VISION_MODEL_TYPES = ("clip_vision_model", "clip")
_CLIP_MODEL_PROJECTION_DIM = 512


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Architecture of the CLIP image encoder; field names and defaults are transformers' `CLIPVisionConfig`.

    Attributes:
      hidden_size: transformer width.
      intermediate_size: MLP hidden width.
      projection_dim: size of `image_embeds` (output of `visual_projection`).
      num_hidden_layers: number of encoder layers.
      num_attention_heads: attention heads per layer (must divide `hidden_size`).
      num_channels: input image channels.
      image_size: input height and width in pixels (square).
      patch_size: patch (conv kernel and stride) size in pixels.
      hidden_act: MLP activation, one of `ACTIVATIONS`.
      layer_norm_eps: epsilon of every LayerNorm.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"CLIP config key {name!r} must be a positive integer, got {value!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"CLIP config key 'hidden_act' = {self.hidden_act!r} is not supported; expected one of "
                f"{sorted(ACTIVATIONS)}"
            )
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"CLIP config key 'layer_norm_eps' must be a float in (0, 1), got {eps!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CLIP config key 'num_attention_heads' = {self.num_attention_heads} does not divide "
                f"'hidden_size' = {self.hidden_size}"
            )
        if self.patch_size > self.image_size:
            raise ValueError(
                f"CLIP config key 'patch_size' = {self.patch_size} exceeds 'image_size' = {self.image_size}"
            )

    @property
    def num_positions(self) -> int:
        """Tokens per image: one per patch plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], source: str = "config") -> CLIPVisionConfig:
        """Builds the config from a transformers `config.json` dict.

        Accepts a `CLIPVisionModelWithProjection` / `CLIPVisionModel` file (flat, `model_type`
        "clip_vision_model") or a full `CLIPModel` file (`vision_config` nested, top-level `projection_dim`).
        Keys absent from the file take transformers' defaults (its `save_pretrained` writes only non-default
        values). Keys that do not change the architecture (dropout, initialisers, generic `PretrainedConfig`
        keys) are ignored.

        Args:
          config: the parsed JSON object.
          source: file name used in error messages.

        Returns:
          The validated config.

        Raises:
          ValueError: naming the key, for a wrong `model_type`, a missing/ill-typed value or an unsupported one.
        """
        model_type = config.get("model_type")
        if "vision_config" in config:
            vision = config["vision_config"]
            if not isinstance(vision, Mapping):
                raise ValueError(f"{source}: key 'vision_config' must be an object, got {type(vision).__name__}")
            if model_type not in (None, "clip"):
                raise ValueError(f"{source}: key 'model_type' = {model_type!r}; a nested vision_config needs 'clip'")
            # CLIPModel's visual_projection uses the top-level projection_dim (CLIPConfig default 512), never
            # the nested one.
            values = dict(vision, projection_dim=config.get("projection_dim", _CLIP_MODEL_PROJECTION_DIM))
            model_type = values.get("model_type")
        else:
            values = dict(config)
        if model_type not in (None, *_VISION_MODEL_TYPES):
            raise ValueError(
                f"{source}: key 'model_type' = {model_type!r} is not a CLIP vision model; expected one of "
                f"{_VISION_MODEL_TYPES}"
            )
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.name not in values:
                continue
            value = values[field.name]
            if field.name in ("image_size", "patch_size") and isinstance(value, (list, tuple)):
                if len(value) != 2 or value[0] != value[1]:
                    raise ValueError(f"{source}: key {field.name!r} = {value!r}; only square sizes are supported")
                value = value[0]
            kwargs[field.name] = value
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """A transformers-loadable `config.json` dict for `CLIPVisionModelWithProjection`."""
        out = dataclasses.asdict(self)
        out.update(model_type="clip_vision_model", architectures=["CLIPVisionModelWithProjection"])
        return out


@struct.dataclass
class CLIPVisionOutput:
    """Encoder outputs (a pytree).

    Attributes:
      image_embeds: `[B, projection_dim]` projected, post-layernormed CLS token.
      last_hidden_state: `[B, num_positions, hidden_size]` output of the last encoder layer (no final norm).
      pooler_output: `[B, hidden_size]` post-layernormed CLS token, before the projection.
    """

    image_embeds: jax.Array
    last_hidden_state: jax.Array
    pooler_output: jax.Array


def _dense(features: int, dtype: Any, param_dtype: Any, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)


def _layer_norm(config: CLIPVisionConfig, dtype: Any, param_dtype: Any, name: str) -> nn.LayerNorm:
    # Two-pass variance, as torch computes it: E[x^2]-E[x]^2 loses digits on CLIP's large activations.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name
    )


class CLIPAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections, scale `head_dim ** -0.5`."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        heads = c.num_attention_heads
        shape = (*x.shape[:-1], heads, c.hidden_size // heads)
        q, k, v = (
            _dense(c.hidden_size, self.dtype, self.param_dtype, name)(x).reshape(shape)
            for name in ("q_proj", "k_proj", "v_proj")
        )
        out = attention(q, k, v, impl=self.attention_impl).reshape(x.shape)
        return _dense(c.hidden_size, self.dtype, self.param_dtype, "out_proj")(out)


class CLIPMLP(nn.Module):
    """`fc2(act(fc1(x)))` with the configured activation."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        x = _dense(c.intermediate_size, self.dtype, self.param_dtype, "fc1")(x)
        x = ACTIVATIONS[c.hidden_act](x)
        return _dense(c.hidden_size, self.dtype, self.param_dtype, "fc2")(x)


class CLIPEncoderLayer(nn.Module):
    """Pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt, pdt = self.config, self.dtype, self.param_dtype
        h = _layer_norm(c, dt, pdt, "layer_norm1")(x)
        x = x + CLIPAttention(c, dt, pdt, self.attention_impl, name="self_attn")(h)
        h = _layer_norm(c, dt, pdt, "layer_norm2")(x)
        mlp = CLIPMLP(c, dt, pdt, name="mlp")
        return x + mlp(h)


class CLIPVisionEmbeddings(nn.Module):
    """Patch embedding (conv, no bias), class token, learned position embeddings."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        c = self.config
        p = c.patch_size
        patches = nn.Conv(
            c.hidden_size,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="patch_embedding",
        )(pixel_values)
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, c.hidden_size)  # row-major over the grid, as torch's flatten(2)
        cls = self.param("class_embedding", nn.initializers.normal(1.0), (c.hidden_size,), self.param_dtype)
        cls = jnp.broadcast_to(cls.astype(patches.dtype), (batch, 1, c.hidden_size))
        embed = nn.Embed(
            c.num_positions,
            c.hidden_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="position_embedding",
        )
        tokens = jnp.concatenate([cls, patches], axis=1)
        return tokens + embed(jnp.arange(c.num_positions))[None]


class _Encoder(nn.Module):
    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            x = CLIPEncoderLayer(self.config, self.dtype, self.param_dtype, self.attention_impl, name=f"layers_{i}")(x)
        return x


class CLIPVisionTransformer(nn.Module):
    """Embeddings, pre-norm, encoder; returns (last_hidden_state, post-normed CLS token)."""

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        c, dt, pdt = self.config, self.dtype, self.param_dtype
        x = CLIPVisionEmbeddings(c, dt, pdt, name="embeddings")(pixel_values)
        x = _layer_norm(c, dt, pdt, "pre_layrnorm")(x)
        encoder = _Encoder(c, dt, pdt, self.attention_impl, name="encoder")
        x = encoder(x)
        pooled = _layer_norm(c, dt, pdt, "post_layernorm")(x[:, 0])
        return x, pooled


class CLIPVisionModelWithProjection(nn.Module):
    """CLIP image encoder with the projection head; `apply({"params": p}, pixels) -> CLIPVisionOutput`.

    Attributes:
      config: architecture (`CLIPVisionConfig`).
      dtype: compute dtype (e.g. `jnp.bfloat16`); parameters stay in `param_dtype`.
      param_dtype: parameter dtype.
      attention_impl: implementation passed to `humandiff.ops.attention.attention`.
    """

    config: CLIPVisionConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str = "auto"

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> CLIPVisionOutput:
        """Encodes CLIP-normalised images.

        Args:
          pixel_values: `[B, S, S, num_channels]` float, NHWC, `S = config.image_size` (see `preprocess`).

        Returns:
          `CLIPVisionOutput` with `image_embeds` `[B, projection_dim]` and `last_hidden_state`.
        """
        c = self.config
        expected = (c.image_size, c.image_size, c.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"CLIP image encoder expects NHWC images [B, {c.image_size}, {c.image_size}, {c.num_channels}] "
                f"(config image_size/num_channels), got shape {tuple(pixel_values.shape)}; resize with preprocess()"
            )
        pixel_values = pixel_values.astype(self.dtype)
        vision = CLIPVisionTransformer(c, self.dtype, self.param_dtype, self.attention_impl, name="vision_model")
        last_hidden_state, pooled = vision(pixel_values)
        embeds = _dense(c.projection_dim, self.dtype, self.param_dtype, "visual_projection", use_bias=False)(pooled)
        return CLIPVisionOutput(image_embeds=embeds, last_hidden_state=last_hidden_state, pooler_output=pooled)


def image_context(image_embeds: jax.Array, drop: jax.Array | None = None) -> jax.Array:
    """One-token cross-attention context `[B, 1, D]`; entries with `drop` True get a zero embedding (CFG).

    Args:
      image_embeds: `[B, D]` from the encoder.
      drop: optional bool `[B]` (condition dropout / the unconditional branch).

    Returns:
      `[B, 1, D]`.
    """
    if drop is not None:
        image_embeds = jnp.where(jnp.asarray(drop, bool)[:, None], 0.0, image_embeds).astype(image_embeds.dtype)
    return image_embeds[:, None, :]

