"""cuDNN requested where it cannot run: XLA result, one logged reason per call shape."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humandiff.ops import attention as attn
from humandiff.ops import attention_xla, cudnn


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the fallback on a machine without cuDNN")
def test_cudnn_on_cpu_falls_back_with_logged_reason(caplog):
    cudnn.clear_fallback_log()
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (2, 12, 2, 40)) for key in keys)
    keep = jnp.array([True, False])
    with caplog.at_level(logging.WARNING, logger="humandiff.ops.cudnn"):
        out = attn.attention(q, k, v, n_ref=5, ref_keep=keep, impl="cudnn")
        attn.attention(q, k, v, n_ref=5, ref_keep=keep, impl="cudnn")  # same shape: not logged again
        cached = attn.attention_cached(q, k, v, k[:1], v[:1], impl="cudnn")
    want = attention_xla.joint(q, k, v, n_ref=5, causal=True, ref_keep=keep)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(cached, attention_xla.cached(q, k, v, k[:1], v[:1], ref_keep=None))
    messages = [r.getMessage() for r in caplog.records if r.name == "humandiff.ops.cudnn"]
    assert len(messages) == 2, messages
    assert all("needs an NVIDIA GPU" in m and "'cpu'" in m for m in messages)
    assert "joint" in messages[0] and "cached" in messages[1]


def test_head_dim_limits(monkeypatch):
    class FakeGpu:
        platform = "cuda"
        compute_capability = "8.0"

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "devices", lambda: [FakeGpu()])
    assert cudnn.unsupported_reason(80) is None
    assert "<= 128" in cudnn.unsupported_reason(160)
    FakeGpu.compute_capability = "9.0"
    assert cudnn.unsupported_reason(160) is None
    assert "multiple of 8" in cudnn.unsupported_reason(44)
