"""Blocked online-softmax XLA attention (`AttentionConfig.xla_key_block`) against the dense float64 oracle.

Tolerances: float32 inputs of unit scale; the blocked recurrence and the oracle differ by float32 rounding only
(measured <= 4e-7 on outputs and gradients here), so 2e-6 / 1e-5 leave room for other CPUs' summation orders while
still failing on any wrong mask, scale or missing block (those are off by > 1e-2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humandiff.ops import attention as attn
from humandiff.ops.attention_blocked import blocked_attention


def _arrays(shape_q, shape_k, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(keys[0], shape_q, jnp.float32)
    k, v = (jax.random.normal(kk, shape_k, jnp.float32) for kk in keys[1:3])
    return q, k, v, jax.random.normal(keys[3], shape_q, jnp.float32)


def _check(fn, q, k, v, cotangent, expected_out, expected_grads):
    out, vjp = jax.vjp(fn, q, k, v)
    np.testing.assert_allclose(out, expected_out, atol=2e-6)
    for got, want in zip(vjp(cotangent), expected_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("block", [1, 4, 11, 16])
def test_blocked_matches_oracle_with_a_key_mask(oracle, block):
    """Blocks of 1 (every block of entry 1's first 5 keys fully masked), a non-divisor, all keys, more than all."""
    dense, _ = oracle
    b, lq, lk, h, d = 2, 7, 11, 2, 8
    q, k, v, ct = _arrays((b, lq, h, d), (b, lk, h, d))
    keep = np.ones((b, lk), bool)
    keep[1, :5] = False
    want, grads = dense(q, k, v, np.broadcast_to(keep[:, None], (b, lq, lk)), ct)
    _check(lambda *a: blocked_attention(*a, jnp.asarray(keep), block), q, k, v, ct, want, grads)


def test_blocked_without_mask_equals_xla():
    q, k, v, _ = _arrays((2, 9, 3, 4), (2, 13, 3, 4), seed=1)
    np.testing.assert_allclose(blocked_attention(q, k, v, block=5),
                               jax.nn.dot_product_attention(q, k, v, implementation="xla"), atol=1e-6)


def _entry_points(config, k_ref, v_ref, keep):
    """(name -> fn(q, k, v)) for the XLA entry points under `config`; q/k/v `[3, 12, 2, 8]`, 5 reference tokens."""
    return {
        "causal": lambda q, k, v: attn.attention(q, k, v, n_ref=5, ref_keep=keep, impl="xla", config=config),
        "full": lambda q, k, v: attn.attention(q, k, v, n_ref=5, interaction="full", ref_keep=keep, impl="xla",
                                               config=config),
        "cached_broadcast": lambda q, k, v: attn.attention_cached(q, k, v, k_ref, v_ref, ref_keep=keep, impl="xla",
                                                                  config=config),
    }


def _allowed(name, keep, joint_allowed):
    """The oracle's mask for each entry point (see `_entry_points`)."""
    if name == "cached_broadcast":
        allowed = np.ones((3, 12, 6 + 12), bool)
        allowed[~keep, :, :6] = False
        return allowed
    return joint_allowed(3, 5, 7, causal=name == "causal", ref_keep=keep)


@pytest.mark.parametrize("name", ["causal", "full", "cached_broadcast"])
def test_entry_points_with_key_blocks_match_oracle(oracle, name):
    """`xla_key_block=4` (with query chunks of 5) through `attention` / `attention_cached`: outputs and gradients."""
    dense, joint_allowed = oracle
    keep = np.array([True, False, True])
    q, k, v, ct = _arrays((3, 12, 2, 8), (3, 12, 2, 8), seed=2)
    k_ref, v_ref = _arrays((1, 6, 2, 8), (1, 6, 2, 8), seed=3)[1:3]
    config = attn.AttentionConfig(xla_query_chunk=5, xla_key_block=4)
    fn = _entry_points(config, k_ref, v_ref, keep)[name]
    assert "custom_vjp" in str(jax.make_jaxpr(fn)(q, k, v))  # the blocked kernel ran
    allowed = _allowed(name, keep, joint_allowed)
    if name == "cached_broadcast":
        rep = lambda x: np.repeat(np.asarray(x), 3, axis=0)  # noqa: E731
        keys, values = np.concatenate([rep(k_ref), k], 1), np.concatenate([rep(v_ref), v], 1)
        want, (dq, dk_all, dv_all) = dense(q, keys, values, allowed, ct)
        grads = (dq, dk_all[:, 6:], dv_all[:, 6:])  # the cache is a constant here
    else:
        want, grads = dense(q, k, v, allowed, ct)
    _check(fn, q, k, v, ct, want, grads)


def test_key_block_must_not_be_negative():
    with pytest.raises(ValueError, match="xla_key_block=-1"):
        attn.AttentionConfig(xla_key_block=-1)


def test_key_block_default_is_blocked_on_cpu_only():
    """None (the default) resolves to CPU_KEY_BLOCK on the CPU backend and to off elsewhere; explicit values win."""
    from humandiff.ops.attention_config import CPU_KEY_BLOCK

    default = attn.AttentionConfig()
    assert default.key_block("cpu") == CPU_KEY_BLOCK > 0
    assert default.key_block("gpu") == default.key_block("tpu") == 0
    assert attn.AttentionConfig(xla_key_block=0).key_block("cpu") == 0
    assert attn.AttentionConfig(xla_key_block=64).key_block("gpu") == 64


def test_default_config_blocks_long_layers_on_cpu():
    """With the default config, a CPU layer with more keys than CPU_KEY_BLOCK runs the blocked kernel (and equals
    `jax.nn.dot_product_attention`); one with fewer keys does not."""
    from humandiff.ops.attention_config import CPU_KEY_BLOCK

    q, k, v, _ = _arrays((1, 8, 1, 4), (1, CPU_KEY_BLOCK + 1, 1, 4), seed=5)
    fn = lambda q, k, v: attn.attention_cached(q, k[:, :8], v[:, :8], k, v, impl="xla")  # noqa: E731
    assert "custom_vjp" in str(jax.make_jaxpr(fn)(q, k, v))
    keys, values = jnp.concatenate([k, k[:, :8]], 1), jnp.concatenate([v, v[:, :8]], 1)
    np.testing.assert_allclose(fn(q, k, v), jax.nn.dot_product_attention(q, keys, values, implementation="xla"),
                               atol=1e-6)
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda q, k, v: attn.attention(q, k, v, impl="xla"))(q, q, q))
