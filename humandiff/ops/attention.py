"""One attention entry point for SCD's reference-first block-causal self-attention.

Layout is `[B, L, H, D]` everywhere. In the joint form the first `n_ref` tokens of every sequence are the
reference: under `interaction="causal"` reference queries see only reference keys and target queries see all
keys; under `"full"` (the paper's ablation) every query sees every key. The cached form is the target pass of
the two-stage decomposition: target queries against `[K_ref ; K_tgt]`, where the reference K/V come from a
cache whose batch may be smaller than the target batch (video frames, CFG branches) and are broadcast.

`ref_keep` (bool `[B]`, optional) drops the reference for some batch entries (condition dropout, the
unconditional CFG branch): those target queries see only target keys. It is a traced value, so switching it
never recompiles.

Implementations (`impl=`):
  * "xla": `jax.nn.dot_product_attention` on XLA (`attention_xla`); the oracle and the CPU default.
  * "cudnn": cuDNN flash attention (`cudnn`); falls back to XLA with a logged reason when it cannot run.
  * "splash": Pallas splash attention on TPU (`splash`), fused or two-pass per `AttentionConfig.splash_variant`.
  * "interpret": the splash kernels in Pallas interpret mode (any backend; slow; for tests).
  * "auto": splash on TPU / cuDNN on GPU when the number of keys is >= the config threshold, else XLA.
"""

from __future__ import annotations

import jax

from humandiff.ops import attention_xla as xla
from humandiff.ops import cudnn, splash
from humandiff.ops.attention_config import DEFAULT_CONFIG, AttentionConfig

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "interpret")
INTERACTIONS = ("causal", "full")

__all__ = ["IMPLEMENTATIONS", "INTERACTIONS", "AttentionConfig", "attention", "attention_cached", "resolve_impl"]


def resolve_impl(impl: str, n_keys: int, config: AttentionConfig | None = None, backend: str | None = None) -> str:
    """The implementation that runs: `impl` itself, or for "auto" the choice for this backend and key count.

    Args:
      impl: one of `IMPLEMENTATIONS`.
      n_keys: keys per query row (joint: L; cached: Lr + Lt).
      config: thresholds (`min_seq_len_tpu`, `min_seq_len_gpu`).
      backend: JAX backend name (default: `jax.default_backend()`).

    Returns:
      "xla", "cudnn", "splash" or "interpret".
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLEMENTATIONS}")
    if impl != "auto":
        return impl
    config = config or DEFAULT_CONFIG
    backend = backend or jax.default_backend()
    if backend == "tpu" and n_keys >= config.min_seq_len_tpu:
        return "splash"
    if backend == "gpu" and n_keys >= config.min_seq_len_gpu:
        return "cudnn"
    return "xla"


def _full(q, k, v, impl, config):
    """Unmasked attention (no reference, or only reference tokens)."""
    if impl == "cudnn":
        return cudnn.full_or_xla(q, k, v, config.xla_query_chunk)
    if impl in ("splash", "interpret"):
        return splash.attend(q, k, v, n_ref_keys=0, ref_keep=None, config=config, interpret=impl == "interpret")
    return xla.dpa(q, k, v, chunk=config.xla_query_chunk, block=config.key_block(jax.default_backend()))


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    n_ref: int = 0,
    interaction: str = "causal",
    ref_keep: jax.Array | None = None,
    impl: str = "auto",
    config: AttentionConfig | None = None,
) -> jax.Array:
    """Self-attention over `[ref ; tgt]` tokens with SCD's reference-first mask.

    Args:
      q, k, v: `[B, L, H, D]`; tokens `[:n_ref]` are the reference, `[n_ref:]` the target.
      n_ref: number of reference tokens (0: ordinary full self-attention).
      interaction: "causal" (reference never sees target) or "full" (bidirectional ablation).
      ref_keep: optional bool `[B]`; False hides the reference from that entry's target queries.
      impl: attention implementation ("auto" picks per backend and shape); see the module docstring.
      config: tiles, thresholds and splash variant (default `AttentionConfig()`).

    Returns:
      `[B, L, H, D]` attention output, reference rows first.
    """
    if interaction not in INTERACTIONS:
        raise ValueError(f"unknown interaction {interaction!r}; expected one of {INTERACTIONS}")
    length = q.shape[1]
    if not 0 <= n_ref <= length:
        raise ValueError(f"n_ref={n_ref} outside [0, {length}]")
    config = config or DEFAULT_CONFIG
    impl = resolve_impl(impl, length, config)
    if n_ref == 0 or n_ref == length:
        return _full(q, k, v, impl, config)
    causal = interaction == "causal"
    if impl == "cudnn":
        return cudnn.joint_or_xla(q, k, v, n_ref=n_ref, causal=causal, ref_keep=ref_keep,
                                  chunk=config.xla_query_chunk)
    if impl in ("splash", "interpret"):
        return splash.joint(q, k, v, n_ref=n_ref, causal=causal, ref_keep=ref_keep, config=config,
                            interpret=impl == "interpret")
    return xla.joint(q, k, v, n_ref=n_ref, causal=causal, ref_keep=ref_keep, chunk=config.xla_query_chunk,
                     block=config.key_block(jax.default_backend()))


def attention_cached(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    k_ref: jax.Array,
    v_ref: jax.Array,
    *,
    ref_keep: jax.Array | None = None,
    impl: str = "auto",
    config: AttentionConfig | None = None,
) -> jax.Array:
    """Target-pass attention: target queries against `[K_ref ; K_tgt]`, `[V_ref ; V_tgt]`.

    Args:
      q, k, v: target `[Bt, Lt, H, D]`.
      k_ref, v_ref: cached reference `[Br, Lr, H, D]` with `Bt % Br == 0`; target entry `i` reads cache
        entry `i // (Bt // Br)` (frames and CFG branches of one reference are contiguous). The XLA path
        broadcasts the cache without copying it; cuDNN and splash repeat the cache's K/V (not logits).
      ref_keep: optional bool `[Bt]`; False hides the reference from that entry.
      impl: attention implementation.
      config: tiles, thresholds (default `AttentionConfig()`).

    Returns:
      `[Bt, Lt, H, D]`.
    """
    bt, lt, h, d = q.shape
    br, lr = k_ref.shape[:2]
    if bt % br:
        raise ValueError(f"target batch {bt} is not a multiple of the reference-cache batch {br}")
    if k_ref.shape[2:] != (h, d) or v_ref.shape != k_ref.shape:
        raise ValueError(f"reference cache K/V shapes {k_ref.shape}/{v_ref.shape} do not match target heads {(h, d)}")
    config = config or DEFAULT_CONFIG
    impl = resolve_impl(impl, lr + lt, config)
    if lr == 0:
        return _full(q, k, v, impl, config)
    if impl == "cudnn":
        return cudnn.cached_or_xla(q, k, v, k_ref, v_ref, ref_keep=ref_keep, chunk=config.xla_query_chunk)
    if impl in ("splash", "interpret"):
        return splash.cached(q, k, v, k_ref, v_ref, ref_keep=ref_keep, config=config, interpret=impl == "interpret")
    return xla.cached(q, k, v, k_ref, v_ref, ref_keep=ref_keep, chunk=config.xla_query_chunk,
                      block=config.key_block(jax.default_backend()))
