"""SD-1.5-family `UNet2DConditionModel` in Flax Linen (NHWC) with SCD self-attention and pose injection.

Plain call, as diffusers: `module.apply({"params": p}, sample, timesteps, encoder_hidden_states)` -> noise
prediction `[N, h, w, out_channels]`. SCD keywords: `pose_features` (added at `pose_injection`), `scd_mode`
(None | "write" | "read" | "joint" | "streams", see `humandiff.models.attention`), `ref_keep` (bool `[N]`),
`num_frames`.

diffusers' naming bug: in SD-1.5 configs `attention_head_dim` holds the number of HEADS per level (8), and
`num_attention_heads` must stay unset; we follow diffusers and read it the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.models.attention import SCD_MODES
from humandiff.models.layers import TimestepEmbedding, conv, group_norm, timestep_embedding
from humandiff.models.temporal import NORM_MODES, MotionOptions
from humandiff.models.unet_blocks import BlockOptions, DownBlock, MidBlock, UpBlock

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_TYPES = ("UNetMidBlock2DCrossAttn",)
POSE_INJECTIONS = ("conv_in", "input")

# diffusers config keys we accept only at the value shown (anything else raises, naming key and value).
_FIXED = {
    "act_fn": "silu", "only_cross_attention": False, "dual_cross_attention": False, "class_embed_type": None,
    "addition_embed_type": None, "addition_time_embed_dim": None, "num_class_embeds": None, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "time_embedding_type": "positional", "time_embedding_act_fn": None, "timestep_post_act": None,
    "time_cond_proj_dim": None, "projection_class_embeddings_input_dim": None, "attention_type": "default",
    "class_embeddings_concat": False, "mid_block_only_cross_attention": None, "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None, "num_attention_heads": None, "dropout": 0.0,
}
# Keys read from config.json that do not change the computation.
_IGNORED = {"sample_size", "upcast_attention", "addition_embed_type_num_heads"}
UNET_FIELDS = (
    "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift", "down_block_types",
    "mid_block_type", "up_block_types", "block_out_channels", "layers_per_block", "downsample_padding",
    "mid_block_scale_factor", "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
    "attention_head_dim", "use_linear_projection", "resnet_out_scale_factor", "time_embedding_dim",
    "conv_in_kernel", "conv_out_kernel",
)


def _tuple(value: Any) -> Any:
    return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _per_level(value: Any, n: int, key: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"UNet config {key}={list(value)} must have one entry per block ({n})")
        return tuple(value)
    return (value,) * n


class UNet2DConditionModel(nn.Module):
    """diffusers-compatible conditional UNet; fields mirror diffusers' `config.json` names (plus SCD fields).

    Attributes (beyond diffusers'):
      attention_impl: self-attention implementation ("auto", "xla", ... see `humandiff.ops.attention`).
      attention_config: optional `AttentionConfig` (tiles, thresholds, splash variant) for that implementation.
      interaction: "causal" (SCD) or "full" (ablation) for the joint form.
      pose_injection: where `pose_features` are added: "conv_in" (after conv_in) or "input" (latent input).
      dtype: compute dtype (parameters stay float32).
      remat: rematerialise ResNets and transformers in the backward pass.
      motion_modules: build AnimateDiff-style temporal layers after the spatial ones (video stage); the
        `motion_*` fields mirror diffusers' `MotionAdapter` config. They are skipped in the reference pass
        (`scd_mode="write"`): the reference is one image. `motion_norm`: GroupNorm statistics per "video"
        (diffusers) or per "frame" (original AnimateDiff code); see `humandiff.models.temporal`.
    """

    sample_size: Any = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    mid_block_type: str = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: Any = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 768
    transformer_layers_per_block: Any = 1
    attention_head_dim: Any = 8
    use_linear_projection: bool = False
    resnet_out_scale_factor: float = 1.0
    time_embedding_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    attention_impl: str = "auto"
    attention_config: Any = None
    interaction: str = "causal"
    pose_injection: str = "conv_in"
    dtype: Any = jnp.float32
    remat: bool = False
    motion_modules: bool = False
    motion_num_attention_heads: Any = 8
    motion_transformer_layers_per_block: Any = 1
    motion_transformer_layers_per_mid_block: int = 1
    motion_max_seq_length: int = 32
    use_motion_mid_block: bool = True
    motion_norm: str = "video"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, source: str = "UNet config", **overrides: Any):
        """Builds the module from a diffusers `config.json` dict; unsupported values raise naming key and value.

        Args:
          config: diffusers UNet config (keys starting with "_" are ignored).
          source: where the config came from (named in errors).
          **overrides: extra fields (attention_impl, interaction, pose_injection, dtype, remat, ...).
        """
        kwargs = {}
        for key, value in config.items():
            if key.startswith("_") or key in _IGNORED:
                continue
            if key in _FIXED:
                if _tuple(value) != _FIXED[key] and not (key == "mid_block_only_cross_attention" and value is False):
                    raise ValueError(f"{source}: unsupported {key}={value!r} (supported: {_FIXED[key]!r})")
            elif key in UNET_FIELDS:
                kwargs[key] = _tuple(value)
            else:
                raise ValueError(f"{source}: unknown UNet config key {key!r} (value {value!r})")
        module = cls(**kwargs, **overrides)
        module.check_config(source)
        return module

    def check_config(self, source: str = "UNet config") -> None:
        """Raises one clear error for an unsupported or inconsistent configuration."""
        n = len(self.down_block_types)
        for i, t in enumerate(self.down_block_types):
            if t not in DOWN_TYPES:
                raise ValueError(f"{source}: unknown down_block_types[{i}]={t!r} (supported: {DOWN_TYPES})")
        for i, t in enumerate(self.up_block_types):
            if t not in UP_TYPES:
                raise ValueError(f"{source}: unknown up_block_types[{i}]={t!r} (supported: {UP_TYPES})")
        if self.mid_block_type not in MID_TYPES:
            raise ValueError(f"{source}: unsupported mid_block_type={self.mid_block_type!r} (supported: {MID_TYPES})")
        if len(self.up_block_types) != n or len(self.block_out_channels) != n:
            raise ValueError(f"{source}: down_block_types, up_block_types and block_out_channels must have the same "
                             f"length; got {n}, {len(self.up_block_types)}, {len(self.block_out_channels)}")
        for key in ("layers_per_block", "transformer_layers_per_block", "attention_head_dim", "cross_attention_dim",
                    "motion_num_attention_heads", "motion_transformer_layers_per_block"):
            _per_level(getattr(self, key), n, key)
        if isinstance(self.cross_attention_dim, (list, tuple)):
            raise ValueError(f"{source}: per-block cross_attention_dim={self.cross_attention_dim} is not supported")
        if self.pose_injection not in POSE_INJECTIONS:
            raise ValueError(f"unknown pose_injection={self.pose_injection!r} (supported: {POSE_INJECTIONS})")
        if self.interaction not in ("causal", "full"):
            raise ValueError(f"unknown interaction={self.interaction!r} (supported: 'causal', 'full')")
        if self.motion_norm not in NORM_MODES:
            raise ValueError(f"{source}: unknown motion_norm={self.motion_norm!r} (supported: {NORM_MODES})")

    def _opts(self, scd_mode: str | None, num_frames: int) -> BlockOptions:
        return BlockOptions(self.norm_num_groups, self.norm_eps, self.use_linear_projection,
                            self.resnet_out_scale_factor, scd_mode, self.interaction, self.attention_impl,
                            self.dtype, self.remat, num_frames, self.attention_config)

    def _motion(self, n_levels: int, scd_mode: str | None) -> tuple[list, MotionOptions | None, list]:
        """Motion options per down level, for the mid block, and per up level (None: no motion modules)."""
        if not self.motion_modules or scd_mode == "write":
            return [None] * n_levels, None, [None] * n_levels
        heads = _per_level(self.motion_num_attention_heads, n_levels, "motion_num_attention_heads")
        depths = _per_level(self.motion_transformer_layers_per_block, n_levels, "motion_transformer_layers_per_block")
        length, norm = self.motion_max_seq_length, self.motion_norm
        down = [MotionOptions(h, d, length, norm) for h, d in zip(heads, depths)]
        mid = (MotionOptions(heads[-1], self.motion_transformer_layers_per_mid_block, length, norm)
               if self.use_motion_mid_block else None)
        return down, mid, down[::-1]

    @nn.compact
    def __call__(self, sample: jax.Array, timesteps: jax.Array | float, encoder_hidden_states: jax.Array, *,
                 pose_features: jax.Array | None = None, scd_mode: str | None = None,
                 ref_keep: jax.Array | None = None, num_frames: int = 1) -> jax.Array:
        """Predicts noise (or v) for `sample` `[N, h, w, in_channels]`.

        Args:
          sample: noisy latents, NHWC.
          timesteps: scalar or `[N]`.
          encoder_hidden_states: cross-attention context `[N, S, cross_attention_dim]`.
          pose_features: optional `[N, h, w, C]` added at the injection point (C = 320-like after conv_in, or
            in_channels at the input).
          scd_mode: None | "write" | "read" | "joint" | "streams".
          ref_keep: optional bool `[N]` (joint: `[N/2]` also accepted); False drops the reference per entry.
          num_frames: frames per video in the batch (`N = B * num_frames`); spatial layers treat frames as batch.

        Returns:
          `[N, h, w, out_channels]` in the compute dtype.
        """
        self.check_config()
        if scd_mode not in SCD_MODES:
            raise ValueError(f"unknown scd_mode {scd_mode!r}; expected one of {SCD_MODES}")
        n_levels = len(self.down_block_types)
        if sample.shape[0] % num_frames:
            raise ValueError(f"batch {sample.shape[0]} is not a multiple of num_frames={num_frames}")
        if scd_mode in ("joint", "streams") and num_frames > 1:
            raise ValueError(f"scd_mode='joint' pairs one reference with one target entry; for num_frames={num_frames}"
                             " use the two-pass form (scd_mode='write' then 'read'), whose cache serves every frame")
        layers = _per_level(self.layers_per_block, n_levels, "layers_per_block")
        depths = _per_level(self.transformer_layers_per_block, n_levels, "transformer_layers_per_block")
        heads = _per_level(self.attention_head_dim, n_levels, "attention_head_dim")
        opts = self._opts(scd_mode, num_frames)
        motion_down, motion_mid, motion_up = self._motion(n_levels, scd_mode)
        channels = self.block_out_channels
        n = sample.shape[0]

        t = jnp.broadcast_to(jnp.asarray(timesteps).reshape(-1), (n,)) if jnp.ndim(timesteps) <= 1 else timesteps
        temb = timestep_embedding(t, channels[0], flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift)
        temb = TimestepEmbedding(self.time_embedding_dim or 4 * channels[0], dtype=self.dtype,
                                 name="time_embedding")(temb.astype(self.dtype))
        context = encoder_hidden_states.astype(self.dtype)

        h = sample.astype(self.dtype)
        if self.center_input_sample:
            h = 2 * h - 1.0
        if pose_features is not None and self.pose_injection == "input":
            h = h + pose_features.astype(h.dtype)
        h = conv(channels[0], self.conv_in_kernel, dtype=self.dtype, name="conv_in")(h)
        if pose_features is not None and self.pose_injection == "conv_in":
            h = h + pose_features.astype(h.dtype)

        skips = [h]
        for i, btype in enumerate(self.down_block_types):
            block = DownBlock(channels[i], layers[i], btype == "CrossAttnDownBlock2D", i < n_levels - 1, heads[i],
                              depths[i], self.downsample_padding, opts, motion_down[i], name=f"down_blocks_{i}")
            h, states = block(h, temb, context, ref_keep)
            skips += states

        h = MidBlock(channels[-1], heads[-1], depths[-1], 1, self.mid_block_scale_factor, opts, motion_mid,
                     name="mid_block")(
            h, temb, context, ref_keep)

        rev_layers, rev_depths, rev_heads = layers[::-1], depths[::-1], heads[::-1]
        for i, btype in enumerate(self.up_block_types):
            count = rev_layers[i] + 1
            states, skips = skips[-count:], skips[:-count]
            final = i == n_levels - 1
            size = None if final else tuple(skips[-1].shape[1:3])
            block = UpBlock(channels[::-1][i], count, btype == "CrossAttnUpBlock2D", not final, rev_heads[i],
                            rev_depths[i], opts, motion_up[i], name=f"up_blocks_{i}")
            h = block(h, states, temb, context, ref_keep, size)

        h = nn.silu(group_norm(self.norm_num_groups, self.norm_eps, "conv_norm_out", self.dtype)(h))
        return conv(self.out_channels, self.conv_out_kernel, dtype=self.dtype, name="conv_out")(h)
