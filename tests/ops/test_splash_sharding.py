"""splash under a (data, fsdp, tensor) mesh runs inside shard_map and equals the unsharded result.

Pallas TPU kernels cannot be partitioned by XLA, so `AttentionConfig(shard_batch_axes=..., shard_head_axis=...)`
wraps the kernel in `jax.shard_map`; here on 8 fake CPU devices in interpret mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from humandiff.ops import attention as attn

TILES = {name: 128 for name in attn.AttentionConfig().blocks()}


@pytest.fixture(scope="module")
def mesh():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py fakes 8 CPU devices)")
    return Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


def test_sharded_splash_equals_unsharded(mesh):
    n_ref, n_tgt = 200, 184
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, ct = (jax.random.normal(key, (4, n_ref + n_tgt, 2, 40)) for key in keys)
    keep = jnp.array([True, False, True, False])
    base = attn.AttentionConfig(**TILES)
    sharded = base.replace(shard_batch_axes=("data", "fsdp"), shard_head_axis="tensor", mesh=mesh)

    def fwd_bwd(config):
        def fn(q, k, v):
            return attn.attention(q, k, v, n_ref=n_ref, ref_keep=keep, impl="interpret", config=config)

        return jax.jit(lambda q, k, v: (lambda out, vjp: (out, vjp(ct)))(*jax.vjp(fn, q, k, v)))

    placed = [jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))) for x in (q, k, v)]
    lowered = fwd_bwd(sharded).lower(*placed)
    assert "manual_computation" in lowered.as_text()  # the kernel runs per shard, not auto-partitioned
    out, grads = lowered.compile()(*placed)
    want, want_grads = fwd_bwd(base)(q, k, v)
    np.testing.assert_array_equal(out, want)
    for got, ref in zip(grads, want_grads):
        np.testing.assert_array_equal(got, ref)


def test_bad_shard_axes_are_named(mesh):
    q = jnp.zeros((3, 256, 2, 40))
    config = attn.AttentionConfig(**TILES, shard_batch_axes=("data", "fsdp"), mesh=mesh)
    with pytest.raises(ValueError, match="batch 3 / heads 2 not divisible"):
        attn.attention(q, q, q, n_ref=128, impl="interpret", config=config)
    with pytest.raises(ValueError, match=r"\['model'\] are not axes of the mesh"):
        attn.attention(q, q, q, n_ref=128, impl="interpret", config=config.replace(shard_head_axis="model"))
