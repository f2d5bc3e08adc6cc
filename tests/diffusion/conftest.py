"""Tiny stand-in SCD models that follow the SCD model contract of humandiff.models (fast to compile)."""

from __future__ import annotations

import math

import flax.linen as nn
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from humandiff.models.clip_vision import CLIPVisionOutput
from humandiff.ops import attention as attn_ops


def _timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TinySCDAttention(nn.Module):
    """Self-attention with the SCD modes of the contract (write / read / joint / None)."""

    heads: int
    scd_mode: str | None
    interaction: str = "causal"

    @nn.compact
    def __call__(self, x, ref_keep=None):
        n, length, c = x.shape
        split = lambda a: a.reshape(a.shape[0], a.shape[1], self.heads, c // self.heads)  # noqa: E731
        q, k, v = (split(nn.Dense(c, use_bias=False, name=name)(x)) for name in ("to_q", "to_k", "to_v"))
        mode = self.scd_mode
        if mode is None:
            out = attn_ops.attention(q, k, v)
        elif mode == "write":
            self.put_variable("ref_kv", "k", k)
            self.put_variable("ref_kv", "v", v)
            out = attn_ops.attention(q, k, v)
        elif mode == "read":
            out = attn_ops.attention_cached(q, k, v, self.get_variable("ref_kv", "k"),
                                            self.get_variable("ref_kv", "v"), ref_keep=ref_keep)
        else:  # joint: batch [ref B ; tgt B]
            b = n // 2
            pair = lambda a: jnp.concatenate([a[:b], a[b:]], axis=1)  # noqa: E731
            keep = None if ref_keep is None else ref_keep[-b:]
            o = attn_ops.attention(pair(q), pair(k), pair(v), n_ref=length, interaction=self.interaction,
                                   ref_keep=keep)
            out = jnp.concatenate([o[:, :length], o[:, length:]], axis=0)
        return nn.Dense(c, name="to_out")(out.reshape(n, length, c))


class TinyUNet(nn.Module):
    """conv_in (+pose) -> depth x [SCD self-attn, cross-attn to the context, temporal mean mix] -> conv_out."""

    out_channels: int = 4
    channels: int = 16
    heads: int = 2
    cross_attention_dim: int = 8
    interaction: str = "causal"
    temporal: bool = True
    depth: int = 1  # attention blocks; 1 keeps every test's compile short

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states, *, pose_features=None, scd_mode=None,
                 ref_keep=None, num_frames=1):
        n, h, w, _ = sample.shape
        t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (n,))
        temb = nn.Dense(self.channels, name="time")(_timestep_embedding(t, self.channels))
        x = nn.Conv(self.channels, (3, 3), name="conv_in")(sample)
        if pose_features is not None:
            x = x + pose_features
        x = nn.silu(x + temb[:, None, None, :])
        for i in range(self.depth):
            tok = x.reshape(n, h * w, self.channels)
            tok = tok + TinySCDAttention(self.heads, scd_mode, self.interaction, name=f"attn1_{i}")(
                nn.LayerNorm(name=f"norm1_{i}")(tok), ref_keep)
            ctx = nn.Dense(self.channels, name=f"ctx_{i}")(encoder_hidden_states)
            q = nn.Dense(self.channels, name=f"q2_{i}")(tok)
            att = jax.nn.softmax(jnp.einsum("nlc,nsc->nls", q, ctx) / math.sqrt(self.channels), axis=-1)
            tok = tok + jnp.einsum("nls,nsc->nlc", att, ctx)
            x = tok.reshape(n, h, w, self.channels)
            if self.temporal and num_frames > 1:
                v = x.reshape((n // num_frames, num_frames) + x.shape[1:])
                x = (v + 0.5 * v.mean(axis=1, keepdims=True)).reshape(x.shape)
        return nn.Conv(self.out_channels, (3, 3), name="conv_out")(nn.silu(x))


class TinyPoseEncoder(nn.Module):
    """Pose image [N, H, W, 3] -> features at latent resolution (stride = VAE factor)."""

    channels: int = 16
    stride: int = 2

    @nn.compact
    def __call__(self, pose):
        x = nn.silu(nn.Conv(8, (3, 3), strides=(self.stride, self.stride), name="conv_0")(pose))
        return nn.Conv(self.channels, (3, 3), name="conv_out")(x)


class TinyVAE(nn.Module):
    """2x down/up autoencoder with the AutoencoderKL surface (`encode -> (mean, logvar)`, `decode`)."""

    latent_channels: int = 4
    scaling_factor: float = 0.5
    shift_factor: float | None = None

    def setup(self):
        self.enc = nn.Conv(2 * self.latent_channels, (3, 3), strides=(2, 2))
        self.dec = nn.Conv(3, (3, 3))

    def encode(self, x):
        mean, logvar = jnp.split(self.enc(x), 2, axis=-1)
        return mean, logvar

    def decode(self, z):
        z = jnp.repeat(jnp.repeat(z, 2, axis=1), 2, axis=2)
        return jnp.tanh(self.dec(z))

    def __call__(self, x):
        return self.decode(self.encode(x)[0])


class TinyImageEncoder(nn.Module):
    """[B, 224, 224, 3] -> `CLIPVisionOutput` with `image_embeds` [B, proj] (average pool + Dense)."""

    projection_dim: int = 8

    @nn.compact
    def __call__(self, x):
        pooled = x.reshape(x.shape[0], 8, x.shape[1] // 8, 8, x.shape[2] // 8, 3).mean(axis=(2, 4))
        embeds = nn.Dense(self.projection_dim)(pooled.reshape(x.shape[0], -1))
        return CLIPVisionOutput(image_embeds=embeds, last_hidden_state=None, pooler_output=None)


def random_params(module: nn.Module, seed: int, *args, **kwargs):
    """Random parameters from shapes alone (`jax.eval_shape`): no XLA compile of the initialisers (seconds each).

    Kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.1^2).
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs)["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "kernel":
            return jnp.asarray(noise / np.sqrt(max(1, int(np.prod(leaf.shape[:-1])))))
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * noise)
        return jnp.asarray(0.1 * noise)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def build_tiny(seed=0, *, vae=True, clip=True, size=16, interaction="causal", temporal=True):
    """Returns `(Models, params)` of a tiny random SCD model (latent = size/2 with a VAE, else pixel space)."""
    from humandiff.models.scd import Models

    channels = 16
    latent_c = 4 if vae else 3
    stride = 2 if vae else 1
    unet = TinyUNet(out_channels=latent_c, channels=channels, interaction=interaction, temporal=temporal)
    pose = TinyPoseEncoder(channels=channels, stride=stride)
    hl = size // stride
    # The real pose encoder's output conv is zero-initialised; a random one exercises the pose path in tests.
    params = {
        "unet": random_params(unet, seed, jnp.zeros((1, hl, hl, latent_c)), jnp.zeros((1,)), jnp.zeros((1, 1, 8))),
        "pose_encoder": random_params(pose, seed + 1, jnp.zeros((1, size, size, 3))),
    }
    v = enc = None
    if vae:
        v = TinyVAE()
        params["vae"] = random_params(v, seed + 2, jnp.zeros((1, size, size, 3)))
    if clip:
        enc = TinyImageEncoder()
        params["image_encoder"] = random_params(enc, seed + 3, jnp.zeros((1, 224, 224, 3)))
    return Models(unet=unet, pose_encoder=pose, vae=v, image_encoder=enc), params


@pytest.fixture(scope="session")
def tiny_builder():
    """`build_tiny` as a fixture (test modules are imported with importlib and cannot import conftest)."""
    return build_tiny
