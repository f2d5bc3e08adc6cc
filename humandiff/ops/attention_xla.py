"""XLA attention paths (`jax.nn.dot_product_attention(implementation="xla")`): the oracle and the CPU default.

Both forms are exact: the causal joint form runs as two passes (reference against reference, target against
all), so no FLOP is spent on the masked quadrant; the cached form broadcasts the reference cache over the
target entries that share it with einsums instead of materialising a repeat.

Every path takes `chunk` (`AttentionConfig.xla_query_chunk`): with more queries than that, the queries run in
chunks of `chunk` tokens one after another (`lax.map`), each rematerialised in the backward pass, so the scores held
at once are `chunk x keys` per head instead of `queries x keys`. Rows of softmax attention are independent, so the
result is the same. SD-1.5's 64x64 latent level has 4096 target queries against 8192 keys: its train step at 512x512
(bf16, batch 1, no EMA) needs 36.3 GB of XLA:CPU temporaries with all queries at once, 12.5 GB in 1024-query chunks.

With `block` (`AttentionConfig.xla_key_block`) > 0, layers with more keys than that run the blocked online-softmax
attention of `attention_blocked` instead of `jax.nn.dot_product_attention` (the cached form then repeats the cache's
K/V over the entries that share it: keys, not scores).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from humandiff.ops.attention_blocked import blocked_attention


def key_mask(ref_keep: jax.Array | None, n_ref: int, n_keys: int) -> jax.Array | None:
    """`[B, 1, 1, n_keys]` mask that hides the first `n_ref` keys where `ref_keep` is False (None: no mask)."""
    if ref_keep is None:
        return None
    is_ref = jnp.arange(n_keys) < n_ref
    return (jnp.asarray(ref_keep, bool)[:, None] | ~is_ref[None, :])[:, None, None, :]


def in_query_chunks(fn: Callable[[jax.Array], jax.Array], q: jax.Array, chunk: int) -> jax.Array:
    """`fn(q)` for a per-query function `fn` of `q` `[B, L, ...]`, run over chunks of `chunk` queries.

    The last chunk is zero-padded (padded rows are computed and dropped). `chunk=0` or `L <= chunk`: one call.
    """
    length = q.shape[1]
    if not chunk or length <= chunk:
        return fn(q)
    n = -(-length // chunk)
    padded = jnp.pad(q, [(0, 0), (0, n * chunk - length)] + [(0, 0)] * (q.ndim - 2))
    chunks = padded.reshape(q.shape[0], n, chunk, *q.shape[2:]).swapaxes(0, 1)
    out = jax.lax.map(jax.checkpoint(fn), chunks)  # [n, B, chunk, ...]
    return out.swapaxes(0, 1).reshape(q.shape[0], n * chunk, *out.shape[3:])[:, :length]


def dpa(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, chunk: int = 0,
        block: int = 0) -> jax.Array:
    """Plain softmax attention, `[B, L, H, D]`, with an optional boolean key mask `[B, 1, 1, keys]`; blocked over
    keys when `block` is nonzero and smaller than the number of keys."""
    if block and k.shape[1] > block:
        keep = None if mask is None else mask[:, 0, 0, :]
        return in_query_chunks(lambda qc: blocked_attention(qc, k, v, keep, block), q, chunk)
    return in_query_chunks(lambda qc: jax.nn.dot_product_attention(qc, k, v, mask=mask, implementation="xla"),
                           q, chunk)


def joint(q: jax.Array, k: jax.Array, v: jax.Array, *, n_ref: int, causal: bool,
          ref_keep: jax.Array | None, chunk: int = 0, block: int = 0) -> jax.Array:
    """Joint `[ref ; tgt]` attention (arguments as `humandiff.ops.attention.attention`; 0 < n_ref < L)."""
    length = q.shape[1]
    if not causal:
        if ref_keep is None:
            return dpa(q, k, v, chunk=chunk, block=block)
        # A dropped reference is invisible to the target; reference rows still see everything (unused then).
        tgt = dpa(q[:, n_ref:], k, v, key_mask(ref_keep, n_ref, length), chunk, block)
        return jnp.concatenate([dpa(q[:, :n_ref], k, v, chunk=chunk, block=block), tgt], axis=1)
    # Causal: two passes, no wasted FLOPs. Pass A: reference against reference; pass B: target against all.
    ref = dpa(q[:, :n_ref], k[:, :n_ref], v[:, :n_ref], chunk=chunk, block=block)
    tgt = dpa(q[:, n_ref:], k, v, key_mask(ref_keep, n_ref, length), chunk, block)
    return jnp.concatenate([ref, tgt], axis=1)


def cached(q: jax.Array, k: jax.Array, v: jax.Array, k_ref: jax.Array, v_ref: jax.Array, *,
           ref_keep: jax.Array | None, chunk: int = 0, block: int = 0) -> jax.Array:
    """Target pass against a broadcast reference cache (arguments as `attention.attention_cached`, validated)."""
    bt, lt, h, d = q.shape
    br, lr = k_ref.shape[:2]
    m = bt // br
    blocked = block and lr + lt > block
    if m == 1 or blocked:  # blocked: the cache's K/V are repeated over the m entries (keys, not scores)
        keys = jnp.concatenate([jnp.repeat(k_ref.astype(k.dtype), m, axis=0), k], axis=1)
        values = jnp.concatenate([jnp.repeat(v_ref.astype(v.dtype), m, axis=0), v], axis=1)
        return dpa(q, keys, values, key_mask(ref_keep, lr, lr + lt), chunk, block)
    # Broadcast the cache over the m entries that share it, without materialising m copies of it.
    kg, vg = k.reshape(br, m, lt, h, d), v.reshape(br, m, lt, h, d)
    keep = None if ref_keep is None else jnp.asarray(ref_keep, bool).reshape(br, m, 1, 1, 1)
    scale = 1.0 / math.sqrt(d)
    f32 = jnp.float32

    def attend(qc):
        lq = qc.shape[1]
        qg = qc.reshape(br, m, lq, h, d)
        s_ref = jnp.einsum("bmqhd,bkhd->bmhqk", qg, k_ref.astype(q.dtype), preferred_element_type=f32) * scale
        s_tgt = jnp.einsum("bmqhd,bmkhd->bmhqk", qg, kg, preferred_element_type=f32) * scale
        if keep is not None:
            s_ref = jnp.where(keep, s_ref, -jnp.inf)
        top = jnp.maximum(s_ref.max(-1, keepdims=True), s_tgt.max(-1, keepdims=True))
        p_ref, p_tgt = jnp.exp(s_ref - top), jnp.exp(s_tgt - top)
        denom = p_ref.sum(-1, keepdims=True) + p_tgt.sum(-1, keepdims=True)
        out = jnp.einsum("bmhqk,bkhd->bmqhd", p_ref / denom, v_ref.astype(f32))
        out = out + jnp.einsum("bmhqk,bmkhd->bmqhd", p_tgt / denom, vg.astype(f32))
        return out.reshape(bt, lq, h, d).astype(q.dtype)

    return in_query_chunks(attend, q, chunk)
