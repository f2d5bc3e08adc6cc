"""The XLA attention path against a dense float64 masked oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humandiff.ops import attention as attn


def _oracle(q, k, v, allowed):
    """Dense softmax attention in float64 numpy; allowed: [B, Lq, Lk] bool."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(allowed[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(shape, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(kk, shape, jnp.float32) for kk in keys]


@pytest.mark.parametrize("interaction", ["causal", "full"])
def test_joint_matches_dense_mask(interaction):
    b, r, t, h, d = 2, 5, 7, 2, 8
    q, k, v = _qkv((b, r + t, h, d))
    keep = np.array([True, False])
    out = attn.attention(q, k, v, n_ref=r, interaction=interaction, ref_keep=keep)
    qi, ki = np.arange(r + t)[:, None], np.arange(r + t)[None, :]
    allowed = np.ones((b, r + t, r + t), bool)
    if interaction == "causal":
        allowed &= (qi >= r) | (ki < r)
    allowed[1] &= (qi < r) | (ki >= r)  # dropped reference: target rows do not see it
    np.testing.assert_allclose(out, _oracle(q, k, v, allowed), atol=2e-6)


def test_causal_reference_rows_ignore_target():
    q, k, v = _qkv((1, 9, 2, 4))
    q2, k2, v2 = (x.at[:, 4:].set(x[:, 4:] * 3.0 + 1.0) for x in (q, k, v))
    a = attn.attention(q, k, v, n_ref=4)
    b = attn.attention(q2, k2, v2, n_ref=4)
    np.testing.assert_array_equal(a[:, :4], b[:, :4])


@pytest.mark.parametrize("frames", [1, 3])
def test_cached_equals_concat(frames):
    br, lr, lt, h, d = 2, 6, 5, 2, 8
    q, k, v = _qkv((br * frames, lt, h, d), seed=1)
    k_ref, v_ref = _qkv((br, lr, h, d), seed=2)[:2]
    keep = np.arange(br * frames) % 2 == 0
    out = attn.attention_cached(q, k, v, k_ref, v_ref, ref_keep=keep)
    rep = lambda x: np.repeat(np.asarray(x), frames, axis=0)  # noqa: E731
    keys = np.concatenate([rep(k_ref), np.asarray(k)], axis=1)
    values = np.concatenate([rep(v_ref), np.asarray(v)], axis=1)
    allowed = np.ones((br * frames, lt, lr + lt), bool)
    allowed[~keep, :, :lr] = False
    np.testing.assert_allclose(out, _oracle(q, keys, values, allowed), atol=2e-6)


def test_bad_arguments():
    q, k, v = _qkv((3, 4, 1, 8))
    with pytest.raises(ValueError, match="not a multiple"):
        attn.attention_cached(q, k, v, k[:2], v[:2])
    with pytest.raises(ValueError, match="unknown attention impl 'nope'"):
        attn.attention(q, k, v, impl="nope")
    with pytest.raises(ValueError, match="unknown interaction"):
        attn.attention(q, k, v, n_ref=1, interaction="sideways")


def _chunked_cases():
    """(name, fn(q, k, v, config)) for every XLA entry point; q/k/v `[3, 12, 2, 8]`."""
    keep = np.array([True, False, True])
    k_ref, v_ref = _qkv((1, 6, 2, 8), seed=3)[:2]
    return {
        "plain": lambda q, k, v, c: attn.attention(q, k, v, impl="xla", config=c),
        "causal": lambda q, k, v, c: attn.attention(q, k, v, n_ref=5, ref_keep=keep, impl="xla", config=c),
        "full": lambda q, k, v, c: attn.attention(q, k, v, n_ref=5, interaction="full", ref_keep=keep, impl="xla",
                                                  config=c),
        "cached": lambda q, k, v, c: attn.attention_cached(q, k, v, k_ref[:1].repeat(3, 0), v_ref[:1].repeat(3, 0),
                                                           ref_keep=keep, impl="xla", config=c),
        "cached_broadcast": lambda q, k, v, c: attn.attention_cached(q, k, v, k_ref, v_ref, ref_keep=keep,
                                                                     impl="xla", config=c),
    }


@pytest.mark.parametrize("name", list(_chunked_cases()))
def test_query_chunks_give_the_same_output_and_gradients(name):
    """Queries in chunks of 5 (not dividing 12, nor the 5/7 reference/target split) vs all at once."""
    fn = _chunked_cases()[name]
    q, k, v = _qkv((3, 12, 2, 8), seed=4)
    whole, chunked = attn.AttentionConfig(xla_query_chunk=0), attn.AttentionConfig(xla_query_chunk=5)
    assert "while" not in jax.jit(lambda *a: fn(*a, whole)).lower(q, k, v).as_text()
    assert "while" in jax.jit(lambda *a: fn(*a, chunked)).lower(q, k, v).as_text()  # the chunked path ran
    np.testing.assert_allclose(fn(q, k, v, chunked), fn(q, k, v, whole), atol=1e-6)
    loss = lambda c: lambda *a: jnp.sum(jnp.sin(fn(*a, c)))  # noqa: E731
    grads_whole = jax.grad(loss(whole), argnums=(0, 1, 2))(q, k, v)
    grads_chunked = jax.grad(loss(chunked), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(grads_chunked, grads_whole):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_query_chunk_must_not_be_negative():
    with pytest.raises(ValueError, match="xla_query_chunk=-1"):
        attn.AttentionConfig(xla_query_chunk=-1)


def test_query_chunks_with_the_batch_sharded():
    """Chunked attention under jit with q/k/v sharded over the batch on 4 devices: same output as unsharded."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    q, k, v = _qkv((4, 12, 2, 8), seed=5)
    config = attn.AttentionConfig(xla_query_chunk=5)
    fn = jax.jit(lambda q, k, v: attn.attention(q, k, v, n_ref=5, impl="xla", config=config))
    sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (q, k, v)]
    out = fn(*sharded)
    assert out.sharding.spec[0] == "data"
    np.testing.assert_allclose(out, fn(q, k, v), atol=1e-6)
