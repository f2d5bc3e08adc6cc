"""Every implementation that runs on CPU against the dense float64 oracle: outputs and q/k/v gradients.

Implementations: XLA, splash fused and two-pass in Pallas interpret mode, and the cuDNN path's key layout
(`[K_tgt ; K_ref]` + key lengths for ref_keep) run through XLA. Shapes are tiny but tile-aware (128-token tiles):
aligned unequal ref/target lengths, and 200/184 (neither a tile multiple, so splash pads and masks).
Tolerances: forward 2e-5 and gradients 1e-4 absolute, for float32 against float64 with O(1) values; the
measured errors are ~1e-6.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humandiff.ops import attention as attn
from humandiff.ops import cudnn

TILES = attn.AttentionConfig(**{name: 128 for name in attn.AttentionConfig().blocks()})
FUSED = TILES
TWO_PASS = TILES.replace(splash_variant="two_pass")
IMPLS = ("xla", "interpret_fused", "interpret_two_pass", "cudnn_layout")
# (n_ref, n_tgt, head_dim, ref_keep)
CASES = [(256, 128, 40, None), (200, 184, 80, (True, False)), (128, 256, 160, (False, True))]


def _joint_fn(impl, n_ref, causal, keep):
    keep = None if keep is None else jnp.asarray(keep)
    if impl == "cudnn_layout":
        return lambda q, k, v: cudnn.joint(q, k, v, n_ref=n_ref, causal=causal, ref_keep=keep, implementation="xla")
    name, config = {"xla": ("xla", TILES), "interpret_fused": ("interpret", FUSED),
                    "interpret_two_pass": ("interpret", TWO_PASS)}[impl]
    interaction = "causal" if causal else "full"
    return lambda q, k, v: attn.attention(q, k, v, n_ref=n_ref, interaction=interaction, ref_keep=keep,
                                          impl=name, config=config)


def _inputs(shape, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    return [jax.random.normal(key, shape, jnp.float32) for key in keys]


@functools.lru_cache(maxsize=None)
def _case_data(case):
    n_ref, n_tgt, d, keep = case
    q, k, v, ct = _inputs((2, n_ref + n_tgt, 2, d), seed=d)
    return q, k, v, ct


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"r{c[0]}-t{c[1]}-d{c[2]}-keep{c[3] is not None}")
def test_joint_forward_and_gradients_match_oracle(oracle, impl, case):
    dense, allowed_fn = oracle
    n_ref, n_tgt, _, keep = case
    q, k, v, ct = _case_data(case)
    fn = _joint_fn(impl, n_ref, True, keep)

    @jax.jit
    def fwd_bwd(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(ct)

    out, grads = fwd_bwd(q, k, v)
    want, want_grads = dense(q, k, v, allowed_fn(2, n_ref, n_tgt, True, keep), ct)
    np.testing.assert_allclose(out, want, atol=2e-5)
    for name, got, ref in zip("qkv", grads, want_grads):
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_full_interaction_with_ref_keep(oracle, impl):
    dense, allowed_fn = oracle
    n_ref, n_tgt, keep = 200, 184, (True, False)
    q, k, v, _ = _case_data(CASES[1])
    out = jax.jit(_joint_fn(impl, n_ref, False, keep))(q, k, v)
    np.testing.assert_allclose(out, dense(q, k, v, allowed_fn(2, n_ref, n_tgt, False, keep)), atol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_reference_rows_bit_identical_when_target_changes(impl):
    n_ref, n_tgt = 200, 184  # unaligned: splash pads each segment; the reference tiles still hold no target key
    q, k, v, _ = _case_data(CASES[1])
    fn = jax.jit(_joint_fn(impl, n_ref, True, None))
    q2, k2, v2 = (x.at[:, n_ref:].set(x[:, n_ref:] * 3.0 + 1.0) for x in (q, k, v))
    a, b = fn(q, k, v), fn(q2, k2, v2)
    np.testing.assert_array_equal(np.asarray(a[:, :n_ref]), np.asarray(b[:, :n_ref]))
    assert not np.array_equal(np.asarray(a[:, n_ref:]), np.asarray(b[:, n_ref:]))


@pytest.mark.parametrize("impl", ["xla", "interpret", "cudnn_layout"])
def test_cached_matches_oracle_with_broadcast_cache(oracle, impl):
    dense, _ = oracle
    br, frames, lr, lt, h, d = 2, 2, 200, 128, 2, 40
    q, k, v, ct = _inputs((br * frames, lt, h, d), seed=7)
    k_ref, v_ref = _inputs((br, lr, h, d), seed=8)[:2]
    keep = jnp.asarray(np.arange(br * frames) % 3 != 1)
    if impl == "cudnn_layout":
        fn = functools.partial(cudnn.cached, ref_keep=keep, implementation="xla")
    else:
        fn = functools.partial(attn.attention_cached, ref_keep=keep, impl=impl, config=TILES)

    @jax.jit
    def fwd_bwd(*args):
        out, vjp = jax.vjp(fn, *args)
        return out, vjp(ct)

    out, grads = fwd_bwd(q, k, v, k_ref, v_ref)
    rep = lambda x: np.repeat(np.asarray(x), frames, axis=0)  # noqa: E731
    keys, values = (np.concatenate([rep(a), np.asarray(b)], axis=1) for a, b in ((k_ref, k), (v_ref, v)))
    allowed = np.ones((br * frames, lt, lr + lt), bool)
    allowed[~np.asarray(keep), :, :lr] = False
    want, (dq, dk_all, dv_all) = dense(q, keys, values, allowed, ct)
    np.testing.assert_allclose(out, want, atol=2e-5)
    np.testing.assert_allclose(grads[0], dq, atol=1e-4)
    np.testing.assert_allclose(grads[1], dk_all[:, lr:], atol=1e-4)
    np.testing.assert_allclose(grads[2], dv_all[:, lr:], atol=1e-4)
    # The cache gradient sums over the entries that share it.
    np.testing.assert_allclose(grads[3], dk_all[:, :lr].reshape(br, frames, lr, h, d).sum(1), atol=1e-4)
    np.testing.assert_allclose(grads[4], dv_all[:, :lr].reshape(br, frames, lr, h, d).sum(1), atol=1e-4)


def test_no_reference_is_plain_attention(oracle):
    dense, _ = oracle
    q, k, v, _ = _inputs((1, 256, 2, 40), seed=3)
    want = dense(q, k, v, np.ones((1, 256, 256), bool))
    for impl in ("xla", "interpret"):
        out = jax.jit(lambda q, k, v: attn.attention(q, k, v, n_ref=0, impl=impl, config=TILES))(q, k, v)
        np.testing.assert_allclose(out, want, atol=2e-5, err_msg=impl)


def test_fused_backward_kernel_and_unpadded_head_dim(oracle):
    """splash's fused dq+dkv backward and head_multiple=1 (no head padding) give the same results."""
    dense, allowed_fn = oracle
    n_ref, n_tgt, _, keep = CASES[1]
    q, k, v, ct = _case_data(CASES[1])
    tiles = {name: 128 for name in attn.AttentionConfig(fused_bwd=True).blocks()}
    config = attn.AttentionConfig(fused_bwd=True, head_multiple=1, **tiles)
    keep = jnp.asarray(keep)

    @jax.jit
    def fwd_bwd(q, k, v):
        fn = lambda *a: attn.attention(*a, n_ref=n_ref, ref_keep=keep, impl="interpret", config=config)  # noqa: E731
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(ct)

    out, grads = fwd_bwd(q, k, v)
    want, want_grads = dense(q, k, v, allowed_fn(2, n_ref, n_tgt, True, np.asarray(keep)), ct)
    np.testing.assert_allclose(out, want, atol=2e-5)
    for name, got, ref in zip("qkv", grads, want_grads):
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=f"d{name}")
