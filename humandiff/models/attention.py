"""Spatial transformer blocks with SCD self-attention (diffusers `Transformer2DModel` / `BasicTransformerBlock`).

Every spatial self-attention (`attn1`) is an SCD attention. Its behaviour is chosen by the static `scd_mode`:
- `None`: ordinary self-attention.
- `"write"` (reference pass): ordinary self-attention that also stores its K and V `[B, L, H, D]` in the mutable
  collection `ref_kv` under the layer's own path (`.../attn1/k`, `.../attn1/v`).
- `"read"` (target pass): target queries against `[K_ref ; K_tgt]`, the reference K/V read from `ref_kv`; the
  target batch may be a multiple of the cache batch (frames, CFG branches) and is broadcast without a copy.
- `"joint"`: the batch is `[ref entries (B) ; target entries (B)]`; attention runs over `[ref ; tgt]` tokens per
  pair with the block-causal mask (or full attention, per `interaction`).
- `"streams"`: the joint form with a separate reference UNet. The UNet runs under `jax.vmap` over
  `scd.STREAM_AXIS` (stream 0: the reference UNet on the reference entries; stream 1: the target UNet on the
  targets); each self-attention gathers both streams' q/k/v, attends as `"joint"` does, and keeps its own half.
Cross-attention (`attn2`) always runs per entry with plain XLA attention.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.ops import attention as attn_ops

Dtype = Any
SCD_MODES = (None, "write", "read", "joint", "streams")
STREAM_AXIS = "scd_stream"  # vmap axis of the "streams" mode: stream 0 the reference UNet, 1 the target UNet


def _split_heads(x: jax.Array, heads: int) -> jax.Array:
    b, length, c = x.shape
    return x.reshape(b, length, heads, c // heads)


def joint_ref_keep(ref_keep: jax.Array | None, pairs: int) -> jax.Array | None:
    """Per-pair `ref_keep` for the joint form: accepts `[B]` (per target) or `[2B]` (per entry, target half used)."""
    if ref_keep is None:
        return None
    n = ref_keep.shape[0]
    if n == pairs:
        return ref_keep
    if n == 2 * pairs:
        return ref_keep[pairs:]
    raise ValueError(f"ref_keep has {n} entries; the joint batch has {pairs} ref/target pairs (expected {pairs} or "
                     f"{2 * pairs})")


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names (`to_q`, `to_k`, `to_v`, `to_out_0`).

    Attributes:
      heads: number of heads.
      dim_head: channels per head.
      self_attention: True for `attn1` (SCD-aware), False for cross-attention.
      scd_mode: None | "write" | "read" | "joint" (self-attention only).
      interaction: "causal" | "full", used by the joint form.
      attention_impl: implementation passed to `humandiff.ops.attention`.
      attention_config: optional `AttentionConfig` (tiles, thresholds) for that implementation.
      qkv_bias: biases on the q/k/v projections.
      dtype: compute dtype.
    """

    heads: int
    dim_head: int
    self_attention: bool = True
    scd_mode: str | None = None
    interaction: str = "causal"
    attention_impl: str = "auto"
    attention_config: Any = None
    qkv_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None,
                 ref_keep: jax.Array | None = None) -> jax.Array:
        inner = self.heads * self.dim_head
        dense = lambda name, bias: nn.Dense(inner, use_bias=bias, dtype=self.dtype, name=name)  # noqa: E731
        src = x if context is None else context.astype(x.dtype)
        q = _split_heads(dense("to_q", self.qkv_bias)(x), self.heads)
        k = _split_heads(dense("to_k", self.qkv_bias)(src), self.heads)
        v = _split_heads(dense("to_v", self.qkv_bias)(src), self.heads)
        if not self.self_attention or self.scd_mode is None:
            out = jax.nn.dot_product_attention(q, k, v, implementation="xla")
        else:
            out = self._scd(q, k, v, ref_keep)
        out = out.reshape(out.shape[0], out.shape[1], inner)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out_0")(out)

    def _scd(self, q, k, v, ref_keep):
        mode = self.scd_mode
        if mode == "write":
            self.put_variable("ref_kv", "k", k)
            self.put_variable("ref_kv", "v", v)
            return attn_ops.attention(q, k, v, impl=self.attention_impl, config=self.attention_config)
        if mode == "read":
            if not self.has_variable("ref_kv", "k"):
                raise ValueError(f"scd_mode='read' but no reference K/V for layer {'/'.join(self.scope.path)}: pass "
                                 "the 'ref_kv' collection from the reference pass (scd_mode='write')")
            k_ref = self.get_variable("ref_kv", "k")
            v_ref = self.get_variable("ref_kv", "v")
            return attn_ops.attention_cached(q, k, v, k_ref, v_ref, ref_keep=ref_keep, impl=self.attention_impl,
                                             config=self.attention_config)
        if mode == "joint":
            n, length = q.shape[:2]
            if n % 2:
                raise ValueError(f"scd_mode='joint' needs a batch [ref B ; tgt B]; got odd batch {n}")
            b = n // 2
            pair = lambda t: jnp.concatenate([t[:b], t[b:]], axis=1)  # noqa: E731  [B, 2L, H, D], ref first
            out = attn_ops.attention(pair(q), pair(k), pair(v), n_ref=length, interaction=self.interaction,
                                     ref_keep=joint_ref_keep(ref_keep, b), impl=self.attention_impl,
                                     config=self.attention_config)
            return jnp.concatenate([out[:, :length], out[:, length:]], axis=0)
        if mode == "streams":  # under vmap over STREAM_AXIS: this stream's [B, L, H, D], the other's gathered
            both = [jax.lax.all_gather(t, STREAM_AXIS) for t in (q, k, v)]  # [2, B, L, H, D]
            length = q.shape[1]
            out = attn_ops.attention(*(jnp.concatenate([t[0], t[1]], axis=1) for t in both), n_ref=length,
                                     interaction=self.interaction, ref_keep=joint_ref_keep(ref_keep, q.shape[0]),
                                     impl=self.attention_impl, config=self.attention_config)
            return jax.lax.dynamic_slice_in_dim(out, jax.lax.axis_index(STREAM_AXIS) * length, length, axis=1)
        raise ValueError(f"unknown scd_mode {mode!r}; expected one of {SCD_MODES}")


class GEGLU(nn.Module):
    """`proj` to 2x inner features; value * GELU(gate) (exact GELU, as torch)."""

    inner: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x), 2, axis=-1)
        return value * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """diffusers `FeedForward` with GEGLU: `net_0` (GEGLU) -> `net_2` (Linear)."""

    mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        h = GEGLU(dim * self.mult, dtype=self.dtype, name="net_0")(x)
        return nn.Dense(dim, dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
    """LayerNorm + SCD self-attention, LayerNorm + cross-attention, LayerNorm + GEGLU feed-forward, residuals."""

    heads: int
    dim_head: int
    scd_mode: str | None = None
    interaction: str = "causal"
    attention_impl: str = "auto"
    attention_config: Any = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None, ref_keep: jax.Array | None = None) -> jax.Array:
        norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)  # noqa: E731
        x = x + Attention(self.heads, self.dim_head, True, self.scd_mode, self.interaction, self.attention_impl,
                          self.attention_config, dtype=self.dtype, name="attn1")(norm("norm1")(x), ref_keep=ref_keep)
        x = x + Attention(self.heads, self.dim_head, False, dtype=self.dtype, name="attn2")(norm("norm2")(x), context)
        return x + FeedForward(dtype=self.dtype, name="ff")(norm("norm3")(x))


class Transformer2DModel(nn.Module):
    """diffusers' continuous-input `Transformer2DModel`: GroupNorm, `proj_in`, blocks, `proj_out`, residual.

    Attributes:
      heads: attention heads.
      dim_head: channels per head (`heads * dim_head` = block channels).
      depth: number of `transformer_blocks`.
      groups: GroupNorm groups (`norm_num_groups`).
      use_linear_projection: `proj_in`/`proj_out` as Linear (True) or 1x1 conv (False).
      scd_mode, interaction, attention_impl, attention_config: passed to every `attn1`.
      dtype: compute dtype.
    """

    heads: int
    dim_head: int
    depth: int = 1
    groups: int = 32
    use_linear_projection: bool = False
    scd_mode: str | None = None
    interaction: str = "causal"
    attention_impl: str = "auto"
    attention_config: Any = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None, ref_keep: jax.Array | None = None) -> jax.Array:
        n, h, w, c = x.shape
        inner = self.heads * self.dim_head
        residual = x
        x = nn.GroupNorm(num_groups=self.groups, epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        if self.use_linear_projection:
            proj = lambda f, name: nn.Dense(f, dtype=self.dtype, name=name)  # noqa: E731
        else:
            proj = lambda f, name: nn.Conv(f, (1, 1), dtype=self.dtype, name=name)  # noqa: E731
        x = proj(inner, "proj_in")(x).reshape(n, h * w, inner)
        for i in range(self.depth):
            block = BasicTransformerBlock(self.heads, self.dim_head, self.scd_mode, self.interaction,
                                          self.attention_impl, self.attention_config, dtype=self.dtype,
                                          name=f"transformer_blocks_{i}")
            x = block(x, context, ref_keep)
        x = proj(c, "proj_out")(x.reshape(n, h, w, inner))
        return x + residual.astype(x.dtype)
