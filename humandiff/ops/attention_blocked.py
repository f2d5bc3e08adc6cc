"""Blocked online-softmax attention in plain XLA: no `queries x keys` score matrix, forward or backward.

The keys are cut into blocks of `block` tokens and visited one after another (`lax.scan`). The forward keeps a
running row maximum, softmax denominator and weighted value sum per query (the flash-attention recurrence) and
saves only the output and each row's log-sum-exp; the backward (a `jax.custom_vjp`) visits the key blocks again,
recomputes each block's probabilities from the log-sum-exp and accumulates dQ while emitting each block's dK / dV.
The scores held at once are `queries x block` per head, against `queries x keys` for `jax.nn.dot_product_attention`,
whose backward also keeps the probabilities of every layer from the forward pass until it is used.

Exact up to float32 rounding (tested against the float64 oracle, outputs and gradients). Selected by
`AttentionConfig.xla_key_block` for the XLA path (`attention_xla.dpa`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _key_blocks(x: jax.Array, block: int, n: int) -> jax.Array:
    """`[B, Lk, ...]` -> `[n, B, block, ...]`, zero-padded to `n * block` keys."""
    pad = n * block - x.shape[1]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
    return x.reshape(x.shape[0], n, block, *x.shape[2:]).swapaxes(0, 1)


def _keep_blocks(keep: jax.Array | None, batch: int, n_keys: int, block: int, n: int) -> jax.Array:
    """bool `[n, B, block]`: which keys a query may see (padding keys never)."""
    keep = jnp.ones((batch, n_keys), bool) if keep is None else jnp.broadcast_to(keep, (batch, n_keys))
    return _key_blocks(keep, block, n)


def _scores(q: jax.Array, kb: jax.Array, keep: jax.Array, scale: float) -> jax.Array:
    """Masked scaled scores `[B, H, Lq, block]` in float32."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q, kb, preferred_element_type=_F32) * scale
    return jnp.where(keep[:, None, None, :], s, -jnp.inf)


def _forward(q, k, v, keep, block):
    b, lq, h, d = q.shape
    n = -(-k.shape[1] // block)
    scale = 1.0 / math.sqrt(d)
    kb, vb, keepb = _key_blocks(k, block, n), _key_blocks(v, block, n), _keep_blocks(keep, b, k.shape[1], block, n)

    def visit(carry, blk):
        top, total, acc = carry
        s = _scores(q, blk[0], blk[2], scale)
        new_top = jnp.maximum(top, s.max(-1))
        safe = jnp.where(jnp.isneginf(new_top), 0.0, new_top)  # a row that has seen only masked keys so far
        p = jnp.exp(s - safe[..., None])
        fade = jnp.exp(top - safe)
        acc = acc * fade[..., None] + jnp.einsum("bhqk,bkhd->bhqd", p, blk[1].astype(_F32))
        return (new_top, total * fade + p.sum(-1), acc), None

    init = (jnp.full((b, h, lq), -jnp.inf, _F32), jnp.zeros((b, h, lq), _F32), jnp.zeros((b, h, lq, d), _F32))
    (top, total, acc), _ = jax.lax.scan(visit, init, (kb, vb, keepb))
    out = (acc / total[..., None]).transpose(0, 2, 1, 3).astype(q.dtype)
    lse = jnp.where(jnp.isneginf(top), 0.0, top) + jnp.log(total)
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked(q, k, v, keep, block):
    return _forward(q, k, v, keep, block)[0]


def _blocked_fwd(q, k, v, keep, block):
    out, lse = _forward(q, k, v, keep, block)
    return out, (q, k, v, keep, out, lse)


def _blocked_bwd(block, res, d_out):
    q, k, v, keep, out, lse = res
    b, lq, h, d = q.shape
    lk = k.shape[1]
    n = -(-lk // block)
    scale = 1.0 / math.sqrt(d)
    kb, vb, keepb = _key_blocks(k, block, n), _key_blocks(v, block, n), _keep_blocks(keep, b, lk, block, n)
    do = d_out.astype(_F32)
    delta = jnp.einsum("bqhd,bqhd->bhq", do, out.astype(_F32))  # rowsum(dO * O) = rowsum(P * dP)

    def visit(dq, blk):
        s = _scores(q, blk[0], blk[2], scale)
        p = jnp.exp(s - lse[..., None])
        dv = jnp.einsum("bhqk,bqhd->bkhd", p, do)
        dp = jnp.einsum("bqhd,bkhd->bhqk", do, blk[1].astype(_F32))
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum("bhqk,bkhd->bqhd", ds, blk[0].astype(_F32))
        dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q.astype(_F32))
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(visit, jnp.zeros((b, lq, h, d), _F32), (kb, vb, keepb))
    unblock = lambda x: x.swapaxes(0, 1).reshape(b, n * block, h, d)[:, :lk]  # noqa: E731
    return dq.astype(q.dtype), unblock(dk).astype(k.dtype), unblock(dv).astype(v.dtype), None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, keep: jax.Array | None = None,
                      block: int = 512) -> jax.Array:
    """Softmax attention over key blocks of `block` tokens; same result as `jax.nn.dot_product_attention`.

    Args:
      q: `[B, Lq, H, D]`; k, v: `[B, Lk, H, D]`.
      keep: optional bool key mask, `[B, Lk]` or broadcastable to it; every query must see at least one key.
      block: keys per block (the last block is padded with masked keys).

    Returns:
      `[B, Lq, H, D]` in q's dtype.
    """
    if block <= 0:
        raise ValueError(f"block={block} must be positive")
    return _blocked(q, k, v, keep, block)
