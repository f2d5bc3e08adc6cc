"""One attention entry point for SCD's reference-first block-causal self-attention.

Layout is `[B, L, H, D]` everywhere. In the joint form the first `n_ref` tokens of every sequence are the
reference: under `interaction="causal"` reference queries see only reference keys and target queries see all
keys; under `"full"` (the paper's ablation) every query sees every key. The cached form is the target pass of
the two-stage decomposition: target queries against `[K_ref ; K_tgt]`, where the reference K/V come from a
cache whose batch may be smaller than the target batch (video frames, CFG branches) and are broadcast without
being copied.

`ref_keep` (bool `[B]`, optional) drops the reference for some batch entries (condition dropout, the
unconditional CFG branch): those target queries see only target keys. It is a traced value, so switching it
never recompiles.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla")
INTERACTIONS = ("causal", "full")


def _check_impl(impl: str) -> str:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLEMENTATIONS}")
    return "xla" if impl == "auto" else impl


def _key_mask(ref_keep: jax.Array | None, n_ref: int, n_keys: int) -> jax.Array | None:
    """`[B, 1, 1, n_keys]` mask that hides the first `n_ref` keys where `ref_keep` is False."""
    if ref_keep is None:
        return None
    is_ref = jnp.arange(n_keys) < n_ref
    return (jnp.asarray(ref_keep, bool)[:, None] | ~is_ref[None, :])[:, None, None, :]


def _dpa(q, k, v, mask=None):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    n_ref: int = 0,
    interaction: str = "causal",
    ref_keep: jax.Array | None = None,
    impl: str = "auto",
) -> jax.Array:
    """Self-attention over `[ref ; tgt]` tokens with SCD's reference-first mask.

    Args:
      q, k, v: `[B, L, H, D]`; tokens `[:n_ref]` are the reference, `[n_ref:]` the target.
      n_ref: number of reference tokens (0: ordinary full self-attention).
      interaction: "causal" (reference never sees target) or "full" (bidirectional ablation).
      ref_keep: optional bool `[B]`; False hides the reference from that entry's target queries.
      impl: attention implementation ("auto" picks per backend and shape).

    Returns:
      `[B, L, H, D]` attention output, reference rows first.
    """
    _check_impl(impl)
    if interaction not in INTERACTIONS:
        raise ValueError(f"unknown interaction {interaction!r}; expected one of {INTERACTIONS}")
    length = q.shape[1]
    if not 0 <= n_ref <= length:
        raise ValueError(f"n_ref={n_ref} outside [0, {length}]")
    if n_ref == 0 or n_ref == length:
        return _dpa(q, k, v)
    if interaction == "full":
        if ref_keep is None:
            return _dpa(q, k, v)
        # A dropped reference is invisible to the target; reference rows still see everything (unused then).
        tgt = _dpa(q[:, n_ref:], k, v, _key_mask(ref_keep, n_ref, length))
        return jnp.concatenate([_dpa(q[:, :n_ref], k, v), tgt], axis=1)
    # Causal: two passes, no wasted FLOPs. Pass A: reference against reference; pass B: target against all.
    ref = _dpa(q[:, :n_ref], k[:, :n_ref], v[:, :n_ref])
    tgt = _dpa(q[:, n_ref:], k, v, _key_mask(ref_keep, n_ref, length))
    return jnp.concatenate([ref, tgt], axis=1)


def attention_cached(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    k_ref: jax.Array,
    v_ref: jax.Array,
    *,
    ref_keep: jax.Array | None = None,
    impl: str = "auto",
) -> jax.Array:
    """Target-pass attention: target queries against `[K_ref ; K_tgt]`, `[V_ref ; V_tgt]`.

    Args:
      q, k, v: target `[Bt, Lt, H, D]`.
      k_ref, v_ref: cached reference `[Br, Lr, H, D]` with `Bt % Br == 0`; target entry `i` reads cache
        entry `i // (Bt // Br)` (frames and CFG branches of one reference are contiguous).
      ref_keep: optional bool `[Bt]`; False hides the reference from that entry.
      impl: attention implementation.

    Returns:
      `[Bt, Lt, H, D]`.
    """
    _check_impl(impl)
    bt, lt, h, d = q.shape
    br, lr = k_ref.shape[:2]
    if bt % br:
        raise ValueError(f"target batch {bt} is not a multiple of the reference-cache batch {br}")
    if k_ref.shape[2:] != (h, d) or v_ref.shape != k_ref.shape:
        raise ValueError(f"reference cache K/V shapes {k_ref.shape}/{v_ref.shape} do not match target heads {(h, d)}")
    if lr == 0:
        return _dpa(q, k, v)
    m = bt // br
    if m == 1:
        keys = jnp.concatenate([k_ref.astype(k.dtype), k], axis=1)
        values = jnp.concatenate([v_ref.astype(v.dtype), v], axis=1)
        return _dpa(q, keys, values, _key_mask(ref_keep, lr, lr + lt))
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
