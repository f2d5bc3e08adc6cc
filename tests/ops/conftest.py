"""Shared helpers for the attention tests: a dense masked float64 oracle with analytic gradients."""

import numpy as np
import pytest


def dense_attention(q, k, v, allowed, cotangent=None):
    """Masked softmax attention in float64 numpy, and its q/k/v gradients for a cotangent.

    Args:
      q: [B, Lq, H, D]; k, v: [B, Lk, H, D]; allowed: bool [B, Lq, Lk].
      cotangent: optional [B, Lq, H, D]; when given, gradients are returned too.

    Returns:
      out, or (out, (dq, dk, dv)).
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1])
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = np.where(allowed[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, v)
    if cotangent is None:
        return out
    do = np.asarray(cotangent, np.float64)
    dv = np.einsum("bhqk,bqhd->bkhd", p, do)
    dp = np.einsum("bqhd,bkhd->bhqk", do, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bhqk,bkhd->bqhd", ds, k) * scale
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
    return out, (dq, dk, dv)


def joint_allowed(batch, n_ref, n_tgt, causal=True, ref_keep=None):
    """bool [B, L, L] of the joint `[ref ; tgt]` mask."""
    length = n_ref + n_tgt
    qi, ki = np.arange(length)[:, None], np.arange(length)[None, :]
    allowed = np.ones((batch, length, length), bool)
    if causal:
        allowed &= (qi >= n_ref) | (ki < n_ref)
    if ref_keep is not None:
        for b in np.nonzero(~np.asarray(ref_keep))[0]:
            allowed[b] &= (qi < n_ref) | (ki >= n_ref)
    return allowed


@pytest.fixture(scope="session")
def oracle():
    """The dense float64 oracle (`dense_attention`) and the joint mask builder (`joint_allowed`)."""
    return dense_attention, joint_allowed
