"""SCD attention with cuDNN flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`).

cuDNN turns a boolean mask into a dense additive bias (no tile skipping, L^2 memory), so no mask is passed:
  * the causal joint form runs as two passes (reference vs reference, target vs all keys);
  * `ref_keep` reorders the target pass's keys as `[K_tgt ; K_ref]` and passes `key_value_seq_lengths =
    Lt + Lr` (kept) or `Lt` (dropped): cuDNN's padding mask then hides the reference. Attention is invariant to
    the order of keys (SD attention has no positional term), so this is exact.
cuDNN takes bf16/fp16 only: other dtypes are cast to bf16 and the output cast back. Head dims must be multiples of
8 and <= 256 on Hopper or newer (<= 128 before). Whenever cuDNN cannot run (no NVIDIA GPU, a head dim it rejects,
a trace-time error from the cuDNN checks) the call falls back to XLA and logs the reason once per shape and reason.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from humandiff.ops import attention_xla as xla

logger = logging.getLogger(__name__)
_HALF = (jnp.bfloat16, jnp.float16)


@functools.lru_cache(maxsize=None)
def _log_once(reason: str, call: tuple) -> None:
    logger.warning("cuDNN attention falls back to XLA for %s: %s", call, reason)


def clear_fallback_log() -> None:
    """Forget which fallbacks were logged (each is logged once per call shape and reason)."""
    _log_once.cache_clear()


def unsupported_reason(head_dim: int) -> str | None:
    """Why cuDNN attention cannot run here for this head dim, or None when it can."""
    backend = jax.default_backend()
    if backend != "gpu":
        return f"cuDNN attention needs an NVIDIA GPU, but the JAX backend is {backend!r}"
    device = jax.devices()[0]
    if device.platform != "cuda":
        return f"cuDNN attention needs CUDA, but the GPU platform is {device.platform!r}"
    capability = str(getattr(device, "compute_capability", "0.0"))
    limit = 256 if int(capability.split(".")[0]) >= 9 else 128
    if head_dim > limit or head_dim % 8:
        return f"head dim {head_dim} must be <= {limit} and a multiple of 8 on compute capability {capability}"
    return None


def _dpa(q, k, v, kv_lengths, implementation):
    dtype = q.dtype if q.dtype in _HALF or implementation != "cudnn" else jnp.bfloat16
    out = jax.nn.dot_product_attention(
        q.astype(dtype), k.astype(dtype), v.astype(dtype), key_value_seq_lengths=kv_lengths,
        implementation=implementation,
    )
    return out.astype(q.dtype)


def target_pass(q, k_tgt, v_tgt, k_ref, v_ref, ref_keep, implementation="cudnn"):
    """Target queries against `[K_tgt ; K_ref]`; `ref_keep=False` entries see only the target keys."""
    keys = jnp.concatenate([k_tgt, k_ref.astype(k_tgt.dtype)], axis=1)
    values = jnp.concatenate([v_tgt, v_ref.astype(v_tgt.dtype)], axis=1)
    lengths = None
    if ref_keep is not None:
        n_tgt, n_all = k_tgt.shape[1], keys.shape[1]
        lengths = jnp.where(jnp.asarray(ref_keep, bool), n_all, n_tgt).astype(jnp.int32)
    return _dpa(q, keys, values, lengths, implementation)


def joint(q: jax.Array, k: jax.Array, v: jax.Array, *, n_ref: int, causal: bool, ref_keep: jax.Array | None,
          implementation: str = "cudnn") -> jax.Array:
    """Joint `[ref ; tgt]` attention without a mask (arguments as `attention.attention`; 0 < n_ref < L).

    `implementation="xla"` runs the same key layout on XLA without the bf16 cast (how it is tested on CPU).
    """
    if not causal and ref_keep is None:
        return _dpa(q, k, v, None, implementation)
    if causal:
        ref = _dpa(q[:, :n_ref], k[:, :n_ref], v[:, :n_ref], None, implementation)
    else:
        ref = _dpa(q[:, :n_ref], k, v, None, implementation)
    tgt = target_pass(q[:, n_ref:], k[:, n_ref:], v[:, n_ref:], k[:, :n_ref], v[:, :n_ref], ref_keep,
                      implementation)
    return jnp.concatenate([ref, tgt], axis=1)


def cached(q, k, v, k_ref, v_ref, *, ref_keep, implementation: str = "cudnn") -> jax.Array:
    """Target pass against the cache (validated arguments); the cache is repeated over the entries sharing it."""
    m = q.shape[0] // k_ref.shape[0]
    k_ref, v_ref = (jnp.repeat(x, m, axis=0) if m > 1 else x for x in (k_ref, v_ref))
    return target_pass(q, k, v, k_ref, v_ref, ref_keep, implementation)


def _with_fallback(name: str, run, fallback, q: jax.Array, call: tuple) -> jax.Array:
    reason = unsupported_reason(q.shape[-1])
    if reason is None:
        try:
            return run()
        except (NotImplementedError, ValueError, RuntimeError) as err:  # cuDNN's trace-time support checks
            reason = f"{type(err).__name__}: {err}"
    _log_once(reason, (name, *call))
    return fallback()


def joint_or_xla(q, k, v, *, n_ref: int, causal: bool, ref_keep, chunk: int = 0) -> jax.Array:
    """`joint` on cuDNN, or the XLA path with a logged reason when cuDNN cannot run."""
    return _with_fallback(
        "joint",
        lambda: joint(q, k, v, n_ref=n_ref, causal=causal, ref_keep=ref_keep),
        lambda: xla.joint(q, k, v, n_ref=n_ref, causal=causal, ref_keep=ref_keep, chunk=chunk),
        q, (tuple(q.shape), str(q.dtype), n_ref, causal),
    )


def full_or_xla(q, k, v, chunk: int = 0) -> jax.Array:
    """Unmasked attention on cuDNN, or XLA with a logged reason."""
    return _with_fallback(
        "full", lambda: _dpa(q, k, v, None, "cudnn"), lambda: xla.dpa(q, k, v, chunk=chunk), q,
        (tuple(q.shape), str(q.dtype)),
    )


def cached_or_xla(q, k, v, k_ref, v_ref, *, ref_keep, chunk: int = 0) -> jax.Array:
    """`cached` on cuDNN, or the XLA path with a logged reason."""
    return _with_fallback(
        "cached",
        lambda: cached(q, k, v, k_ref, v_ref, ref_keep=ref_keep),
        lambda: xla.cached(q, k, v, k_ref, v_ref, ref_keep=ref_keep, chunk=chunk),
        q, (tuple(q.shape), tuple(k_ref.shape), str(q.dtype)),
    )
