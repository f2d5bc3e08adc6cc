"""XLA attention paths (`jax.nn.dot_product_attention(implementation="xla")`): the oracle and the CPU default.

Both forms are exact: the causal joint form runs as two passes (reference against reference, target against
all), so no FLOP is spent on the masked quadrant; the cached form broadcasts the reference cache over the
target entries that share it with einsums instead of materialising a repeat.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def key_mask(ref_keep: jax.Array | None, n_ref: int, n_keys: int) -> jax.Array | None:
    """`[B, 1, 1, n_keys]` mask that hides the first `n_ref` keys where `ref_keep` is False (None: no mask)."""
    if ref_keep is None:
        return None
    is_ref = jnp.arange(n_keys) < n_ref
    return (jnp.asarray(ref_keep, bool)[:, None] | ~is_ref[None, :])[:, None, None, :]


def dpa(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Plain softmax attention, `[B, L, H, D]`, with an optional boolean mask."""
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def joint(q: jax.Array, k: jax.Array, v: jax.Array, *, n_ref: int, causal: bool,
          ref_keep: jax.Array | None) -> jax.Array:
    """Joint `[ref ; tgt]` attention (arguments as `humandiff.ops.attention.attention`; 0 < n_ref < L)."""
    length = q.shape[1]
    if not causal:
        if ref_keep is None:
            return dpa(q, k, v)
        # A dropped reference is invisible to the target; reference rows still see everything (unused then).
        tgt = dpa(q[:, n_ref:], k, v, key_mask(ref_keep, n_ref, length))
        return jnp.concatenate([dpa(q[:, :n_ref], k, v), tgt], axis=1)
    # Causal: two passes, no wasted FLOPs. Pass A: reference against reference; pass B: target against all.
    ref = dpa(q[:, :n_ref], k[:, :n_ref], v[:, :n_ref])
    tgt = dpa(q[:, n_ref:], k, v, key_mask(ref_keep, n_ref, length))
    return jnp.concatenate([ref, tgt], axis=1)


def cached(q: jax.Array, k: jax.Array, v: jax.Array, k_ref: jax.Array, v_ref: jax.Array, *,
           ref_keep: jax.Array | None) -> jax.Array:
    """Target pass against a broadcast reference cache (arguments as `attention.attention_cached`, validated)."""
    bt, lt, h, d = q.shape
    br, lr = k_ref.shape[:2]
    m = bt // br
    if m == 1:
        keys = jnp.concatenate([k_ref.astype(k.dtype), k], axis=1)
        values = jnp.concatenate([v_ref.astype(v.dtype), v], axis=1)
        return dpa(q, keys, values, key_mask(ref_keep, lr, lr + lt))
    # Broadcast the cache over the m entries that share it, without materialising m copies of it.
    shape = (br, m, lt, h, d)
    qg, kg, vg = q.reshape(shape), k.reshape(shape), v.reshape(shape)
    scale = 1.0 / math.sqrt(d)
    f32 = jnp.float32
    s_ref = jnp.einsum("bmqhd,bkhd->bmhqk", qg, k_ref.astype(q.dtype), preferred_element_type=f32) * scale
    s_tgt = jnp.einsum("bmqhd,bmkhd->bmhqk", qg, kg, preferred_element_type=f32) * scale
    if ref_keep is not None:
        keep = jnp.asarray(ref_keep, bool).reshape(br, m, 1, 1, 1)
        s_ref = jnp.where(keep, s_ref, -jnp.inf)
    top = jnp.maximum(s_ref.max(-1, keepdims=True), s_tgt.max(-1, keepdims=True))
    p_ref, p_tgt = jnp.exp(s_ref - top), jnp.exp(s_tgt - top)
    denom = p_ref.sum(-1, keepdims=True) + p_tgt.sum(-1, keepdims=True)
    out = jnp.einsum("bmhqk,bkhd->bmqhd", p_ref / denom, v_ref.astype(f32))
    out = out + jnp.einsum("bmhqk,bmkhd->bmqhd", p_tgt / denom, vg.astype(f32))
    return out.reshape(bt, lt, h, d).astype(q.dtype)
