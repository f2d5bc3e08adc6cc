"""Tuning knobs for `humandiff.ops.attention`: auto-selection thresholds and Pallas splash block sizes.

The implementation itself (`impl=`) is chosen by the caller (the UNet's `attention_impl` field); this object only
says *how* an implementation runs. It is a frozen, hashable dataclass so that it can be a static field of a Linen
module and a `jax.jit` static argument.
"""

from __future__ import annotations

import dataclasses

from jax.sharding import Mesh

SPLASH_VARIANTS = ("fused", "two_pass")
CPU_KEY_BLOCK = 512  # `xla_key_block=None` on the CPU backend (512 and 256 ran alike, docs/results.md)
MIN_BLOCK = 128  # TPU lane width: splash kv-compute blocks must be multiples of it; we apply it to every block.


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """How the attention implementations run. Defaults are unmeasured on TPU/GPU (no device was available).

    Attributes:
      min_seq_len_tpu: `impl="auto"` uses splash on TPU when the number of keys is >= this (else XLA).
      min_seq_len_gpu: `impl="auto"` uses cuDNN on GPU when the number of keys is >= this (else XLA).
      splash_variant: "fused" (one kernel with the lazy reference-first mask; the masked ref->target quadrant is
        skipped) or "two_pass" (reference pass + target pass, both with full masks, outputs concatenated).
      block_q, block_kv, block_kv_compute: splash forward tiles (tokens).
      block_q_dkv, block_kv_dkv, block_kv_dkv_compute: splash dK/dV backward tiles.
      block_q_dq, block_kv_dq: splash dQ backward tiles (unused when `fused_bwd`).
      fused_bwd: use splash's fused dq+dkv backward kernel instead of two kernels.
      adapt_blocks: halve every block (down to 128) until each reference/target segment length is a multiple of
        the tile; e.g. 2304 tokens run with 256-token tiles instead of padding 1024-token tiles to 3072.
      pad_unaligned: pad segments that are still not tile multiples with masked tokens; False raises ValueError.
      head_multiple: zero-pad the head dim to a multiple of this for splash (TPU MXU tiles are 128 wide); 1 disables.
      shard_batch_axes: mesh axes the batch is sharded over (e.g. ("data", "fsdp")). Pallas TPU kernels cannot be
        partitioned by XLA, so with a mesh splash runs inside `jax.shard_map` over these axes (and `shard_head_axis`).
      shard_head_axis: mesh axis the heads are sharded over (e.g. "tensor"), or None.
      mesh: the mesh for that shard_map; None uses the context mesh (`jax.set_mesh`), and with neither (or no
        shard axes) splash runs unsharded.
      xla_query_chunk: the XLA path (and cuDNN's fallback to it) runs layers with more queries than this in chunks
        of this many queries, one after another, each rematerialised in the backward pass: scores held at once are
        `chunk x keys` per head (see `attention_xla`). 0 = all queries at once.
      xla_key_block: the XLA path runs layers with more keys than this as blocked online-softmax attention over key
        blocks of this many tokens (`attention_blocked`: no `queries x keys` scores, forward or backward). 0 = off
        (`jax.nn.dot_product_attention`); None = `CPU_KEY_BLOCK` on the CPU backend and off elsewhere (on XLA:CPU
        the blocked form ran a 34 M-parameter UNet's train step 2.6x as fast in a third of the temporaries,
        docs/results.md; on GPU/TPU it is unmeasured, and there long sequences go to cuDNN / splash anyway).
    """

    min_seq_len_tpu: int = 4096
    min_seq_len_gpu: int = 4096
    splash_variant: str = "fused"
    block_q: int = 1024
    block_kv: int = 1024
    block_kv_compute: int = 512
    block_q_dkv: int = 1024
    block_kv_dkv: int = 1024
    block_kv_dkv_compute: int = 512
    block_q_dq: int = 1024
    block_kv_dq: int = 1024
    fused_bwd: bool = False
    adapt_blocks: bool = True
    pad_unaligned: bool = True
    head_multiple: int = 128
    shard_batch_axes: tuple[str, ...] = ()
    shard_head_axis: str | None = None
    mesh: Mesh | None = None
    xla_query_chunk: int = 1024
    xla_key_block: int | None = None

    def __post_init__(self):
        if self.splash_variant not in SPLASH_VARIANTS:
            raise ValueError(
                f"AttentionConfig.splash_variant={self.splash_variant!r}; expected one of {SPLASH_VARIANTS}"
            )
        for name in ("min_seq_len_tpu", "min_seq_len_gpu", "head_multiple", "xla_query_chunk", "xla_key_block"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"AttentionConfig.{name}={getattr(self, name)} must be >= 0")
        for name, value in self.blocks().items():
            if value <= 0 or value % MIN_BLOCK:
                raise ValueError(f"AttentionConfig.{name}={value} must be a positive multiple of {MIN_BLOCK}")
        for block, compute in (("block_kv", "block_kv_compute"), ("block_kv_dkv", "block_kv_dkv_compute")):
            if getattr(self, block) % getattr(self, compute):
                raise ValueError(
                    f"AttentionConfig.{compute}={getattr(self, compute)} must divide {block}={getattr(self, block)}"
                )

    def blocks(self) -> dict[str, int]:
        """The splash tile sizes by field name (dq tiles left out when the backward is fused)."""
        names = ["block_q", "block_kv", "block_kv_compute", "block_q_dkv", "block_kv_dkv", "block_kv_dkv_compute"]
        if not self.fused_bwd:
            names += ["block_q_dq", "block_kv_dq"]
        return {name: getattr(self, name) for name in names}

    def key_block(self, backend: str) -> int:
        """`xla_key_block` resolved for a backend (None: `CPU_KEY_BLOCK` on "cpu", else 0)."""
        if self.xla_key_block is not None:
            return self.xla_key_block
        return CPU_KEY_BLOCK if backend == "cpu" else 0

    def replace(self, **changes) -> AttentionConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


DEFAULT_CONFIG = AttentionConfig()
