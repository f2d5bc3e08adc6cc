"""diffusers-compatible `AutoencoderKL` (SD VAE) in Flax Linen, NHWC.

`encode(x) -> (mean, logvar)` for images in [-1, 1]; `sample(x, rng)` draws a latent; `decode(z)` maps latents
back to images. Latents are *unscaled*: multiply by `scaling_factor` before diffusion, divide before decoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.models.layers import Downsample2D, ResnetBlock2D, Upsample2D, conv, group_norm

Dtype = Any
_EPS = 1e-6  # diffusers' VAE uses eps=1e-6 in every GroupNorm


class VAEAttention(nn.Module):
    """Single-head spatial self-attention of the VAE mid block (`group_norm`, biased q/k/v, residual)."""

    groups: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        y = group_norm(self.groups, _EPS, "group_norm", self.dtype)(x).reshape(n, h * w, 1, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=name)(y) for name in ("to_q", "to_k", "to_v"))
        out = jax.nn.dot_product_attention(q, k, v, implementation="xla").reshape(n, h * w, c)
        out = nn.Dense(c, dtype=self.dtype, name="to_out_0")(out)
        return out.reshape(n, h, w, c) + x


class VAEMidBlock(nn.Module):
    """`UNetMidBlock2D` without time embedding: resnet, (attention), resnet."""

    channels: int
    groups: int
    add_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        res = lambda name: ResnetBlock2D(self.channels, self.groups, _EPS, use_time_emb=False,  # noqa: E731
                                         dtype=self.dtype, name=name)
        x = res("resnets_0")(x)
        if self.add_attention:
            x = VAEAttention(self.groups, self.dtype, name="attentions_0")(x)
        return res("resnets_1")(x)


class _ResnetStack(nn.Module):
    """`DownEncoderBlock2D` / `UpDecoderBlock2D`: `num_layers` resnets, then an optional resampler."""

    out_channels: int
    num_layers: int
    groups: int
    resample: str | None  # None | "down" | "up"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, _EPS, use_time_emb=False, dtype=self.dtype,
                              name=f"resnets_{j}")(x)
        if self.resample == "down":
            x = Downsample2D(self.out_channels, padding=0, dtype=self.dtype, name="downsamplers_0")(x)
        elif self.resample == "up":
            x = Upsample2D(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """Image -> `2 * latent_channels` moments (diffusers `Encoder`, double_z)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    groups: int
    latent_channels: int
    mid_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        chans = self.block_out_channels
        x = conv(chans[0], dtype=self.dtype, name="conv_in")(x)
        for i, c in enumerate(chans):
            x = _ResnetStack(c, self.layers_per_block, self.groups, "down" if i < len(chans) - 1 else None,
                             self.dtype, name=f"down_blocks_{i}")(x)
        x = VAEMidBlock(chans[-1], self.groups, self.mid_attention, self.dtype, name="mid_block")(x)
        x = nn.silu(group_norm(self.groups, _EPS, "conv_norm_out", self.dtype)(x))
        return conv(2 * self.latent_channels, dtype=self.dtype, name="conv_out")(x)


class Decoder(nn.Module):
    """Latent -> image (diffusers `Decoder`)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    groups: int
    out_channels: int
    mid_attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        chans = self.block_out_channels[::-1]
        x = conv(chans[0], dtype=self.dtype, name="conv_in")(z)
        x = VAEMidBlock(chans[0], self.groups, self.mid_attention, self.dtype, name="mid_block")(x)
        for i, c in enumerate(chans):
            x = _ResnetStack(c, self.layers_per_block + 1, self.groups, "up" if i < len(chans) - 1 else None,
                             self.dtype, name=f"up_blocks_{i}")(x)
        x = nn.silu(group_norm(self.groups, _EPS, "conv_norm_out", self.dtype)(x))
        return conv(self.out_channels, dtype=self.dtype, name="conv_out")(x)


_FIXED = {"act_fn": "silu", "latents_mean": None, "latents_std": None}
_IGNORED = {"sample_size", "force_upcast"}
_FIELDS = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
           "layers_per_block", "latent_channels", "norm_num_groups", "scaling_factor", "shift_factor",
           "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")


class AutoencoderKL(nn.Module):
    """SD VAE; fields mirror diffusers' `config.json`. Methods: `encode`, `sample`, `decode`, `init_all`."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, source: str = "VAE config", **overrides: Any):
        """Builds the module from a diffusers `config.json` dict; unsupported values raise naming key and value."""
        kwargs = {}
        for key, value in config.items():
            if key.startswith("_") or key in _IGNORED:
                continue
            if key in _FIXED:
                if value != _FIXED[key]:
                    raise ValueError(f"{source}: unsupported {key}={value!r} (supported: {_FIXED[key]!r})")
            elif key in _FIELDS:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
            else:
                raise ValueError(f"{source}: unknown AutoencoderKL config key {key!r} (value {value!r})")
        for i, t in enumerate(kwargs.get("down_block_types", ())):
            if t != "DownEncoderBlock2D":
                raise ValueError(f"{source}: unknown down_block_types[{i}]={t!r} (supported: 'DownEncoderBlock2D')")
        for i, t in enumerate(kwargs.get("up_block_types", ())):
            if t != "UpDecoderBlock2D":
                raise ValueError(f"{source}: unknown up_block_types[{i}]={t!r} (supported: 'UpDecoderBlock2D')")
        return cls(**kwargs, **overrides)

    def setup(self):
        args = (self.block_out_channels, self.layers_per_block, self.norm_num_groups)
        self.encoder = Encoder(*args, self.latent_channels, self.mid_block_add_attention, self.dtype)
        self.decoder = Decoder(*args, self.out_channels, self.mid_block_add_attention, self.dtype)
        m = 2 * self.latent_channels
        self.quant_conv = conv(m, 1, dtype=self.dtype) if self.use_quant_conv else None
        self.post_quant_conv = conv(self.latent_channels, 1, dtype=self.dtype) if self.use_post_quant_conv else None

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Images `[N, H, W, 3]` in [-1, 1] -> latent `(mean, logvar)` `[N, H/f, W/f, latent_channels]`."""
        moments = self.encoder(x.astype(self.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def sample(self, x: jax.Array, rng: jax.Array) -> jax.Array:
        """Draws an (unscaled) latent `mean + exp(logvar / 2) * eps`."""
        mean, logvar = self.encode(x)
        eps = jax.random.normal(rng, mean.shape, jnp.float32).astype(mean.dtype)
        return mean + jnp.exp(0.5 * logvar) * eps

    def decode(self, z: jax.Array) -> jax.Array:
        """Unscaled latents -> images (approximately [-1, 1])."""
        z = z.astype(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def init_all(self, x: jax.Array, rng: jax.Array) -> jax.Array:
        """Encode-sample-decode; used to initialise every parameter."""
        return self.decode(self.sample(x, rng))

    def __call__(self, x: jax.Array, rng: jax.Array) -> jax.Array:
        return self.init_all(x, rng)
