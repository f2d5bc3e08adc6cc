"""SCD attention on TPU with Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`).

Two forms:
  * fused: one kernel over `[ref ; tgt]` tokens whose mask is `RefFirstMask`, a lazy mask (it never builds an
    L x L array). When the reference and target lengths are tile multiples, the ref-rows x tgt-columns tiles are
    empty, so splash's MaskInfo marks them 0 and the forward, dQ and dK/dV kernels skip them (no compute, no DMA),
    and every other tile is full (no per-element masking).
  * two_pass: reference queries against reference keys, target queries against all keys, each a kernel with a
    full mask; outputs concatenated. Same FLOPs as the fused form, two launches.

Splash has no softmax scale and no batch axis: q is pre-scaled by 1/sqrt(D), the head dim is zero-padded to a
multiple of `head_multiple` (zeros leave q.k unchanged; padded output columns are sliced off), and the kernel is
vmapped over the batch. Segment lengths that are not tile multiples are padded per segment (reference and
target separately, so the skipped quadrant stays tile-aligned) and the padding is masked out by the same lazy
mask. `ref_keep` becomes splash segment ids (traced, no recompilation). Kernels are cached by mask, heads, tiles.
XLA cannot partition a Pallas TPU kernel, so with `AttentionConfig.shard_batch_axes`/`shard_head_axis` and a mesh
the kernel runs inside `jax.shard_map` (each device: its batch and head shard). With `interpret=True` the same
kernels run in Pallas interpret mode on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from humandiff.ops.attention_config import MIN_BLOCK, AttentionConfig


@dataclasses.dataclass(frozen=True)
class Segments:
    """Token layout of one attention axis: `[ref (n_ref) | pad | tgt (n_tgt) | pad]`, `length` in all."""

    n_ref: int
    ref_end: int
    n_tgt: int
    length: int

    @property
    def tgt_end(self) -> int:
        return self.ref_end + self.n_tgt

    @property
    def padded(self) -> bool:
        return self.ref_end != self.n_ref or self.tgt_end != self.length

    @classmethod
    def plan(cls, n_ref: int, n_tgt: int, unit: int) -> Segments:
        """Pads each non-empty segment up to a multiple of `unit` tokens."""
        ref_end = -(-n_ref // unit) * unit
        return cls(n_ref, ref_end, n_tgt, ref_end + -(-n_tgt // unit) * unit)


def _indices(part: slice | int, size: int) -> np.ndarray:
    if isinstance(part, int):
        return np.array([part])
    start, stop, step = part.indices(size)
    return np.arange(start, stop, step)


@dataclasses.dataclass(frozen=True)
class RefFirstMask(sa.Mask):
    """Lazy reference-first mask over padded `[ref ; tgt]` layouts (hashable; evaluated per tile).

    Keys are valid when they are real reference or target tokens. Under `causal`, query rows before
    `q.ref_end` (reference rows and their padding) see only reference keys; every other row sees every valid
    key. Padded query rows always see at least one valid key (no empty softmax rows).
    """

    q: Segments
    kv: Segments
    causal: bool

    @property
    def shape(self) -> tuple[int, int]:
        return (self.q.length, self.kv.length)

    def __getitem__(self, idx) -> np.ndarray:
        if not isinstance(idx, tuple) or len(idx) != 2:
            raise NotImplementedError(f"RefFirstMask supports [rows, cols] indexing, got {idx!r}")
        rows = _indices(idx[0], self.q.length)[:, None]
        cols = _indices(idx[1], self.kv.length)[None, :]
        is_ref_key = cols < self.kv.n_ref
        allowed = is_ref_key | ((cols >= self.kv.ref_end) & (cols < self.kv.tgt_end))
        if self.causal:
            allowed = allowed & ((rows >= self.q.ref_end) | is_ref_key)
        out = np.broadcast_to(allowed, (rows.shape[0], cols.shape[1]))
        if isinstance(idx[0], int):
            out = out[0]
        if isinstance(idx[1], int):
            out = out[..., 0]
        return np.ascontiguousarray(out)


def fit_blocks(config: AttentionConfig, segment_lengths: tuple[int, ...]) -> tuple[sa.BlockSizes, int]:
    """Splash tiles for these segment lengths and the padding unit (lcm of all tiles).

    Args:
      config: the configured tiles and the adapt/pad policy.
      segment_lengths: lengths of the reference/target segments on both axes (zeros ignored).

    Returns:
      `(BlockSizes, unit)`; every segment is padded to a multiple of `unit`.

    Raises:
      ValueError: a segment is not a tile multiple and `config.pad_unaligned` is False.
    """
    blocks = config.blocks()
    lengths = [n for n in segment_lengths if n]

    def unit_of(b):
        return math.lcm(*b.values())

    if config.adapt_blocks:
        while unit_of(blocks) > MIN_BLOCK and any(n % unit_of(blocks) for n in lengths):
            blocks = {name: max(MIN_BLOCK, b // 2 // MIN_BLOCK * MIN_BLOCK) for name, b in blocks.items()}
        for block, compute in (("block_kv", "block_kv_compute"), ("block_kv_dkv", "block_kv_dkv_compute")):
            if blocks[block] % blocks[compute]:
                blocks[compute] = blocks[block]
    unit = unit_of(blocks)
    bad = [n for n in lengths if n % unit]
    if bad and not config.pad_unaligned:
        raise ValueError(
            f"splash attention: sequence segment length {bad[0]} is not a multiple of the tile {unit} "
            f"(tiles {blocks}); use lengths that are multiples of {unit}, or AttentionConfig(pad_unaligned=True)"
        )
    return sa.BlockSizes(**blocks, use_fused_bwd_kernel=config.fused_bwd), unit


@functools.lru_cache(maxsize=64)
def make_kernel(mask: sa.Mask, heads: int, block_sizes: sa.BlockSizes, interpret: bool) -> sa.SplashAttentionKernel:
    """The splash MHA kernel for one mask shared by all heads (cached; mask processing runs on the host once)."""
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(
            sa.MultiHeadMask([mask] * heads), block_sizes=block_sizes, head_shards=1, q_seq_shards=1,
            interpret=interpret,
        )


def build_mask(q: Segments, kv: Segments, causal: bool) -> sa.Mask:
    """`FullMask` when nothing is masked, else the lazy `RefFirstMask`."""
    masked_quadrant = causal and q.ref_end > 0 and kv.n_tgt > 0
    if not (q.padded or kv.padded or masked_quadrant):
        return sa.FullMask((q.length, kv.length))
    return RefFirstMask(q, kv, causal)


def block_maps(kernel: sa.SplashAttentionKernel, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Tile maps of a kernel from its public MaskInfo attributes: 0 skipped, 1 partial, 2 full (head 0).

    Splash shrinks its grid by dropping empty tiles, so the maps are rebuilt from `block_mask` and `data_next`
    (the kv tile index for fwd/dq; the q tile index for dK/dV, whose grid is kv-major).

    Args:
      kernel: a kernel from `make_kernel`.
      shape: the mask shape `(q_len, kv_len)` the kernel was built for.

    Returns:
      {"fwd"|"dq"|"dkv": int array [q_tiles, kv_tiles]} for the kernels that exist.
    """
    bs = kernel.kwargs["block_sizes"]
    tiles = {"fwd": (bs.block_q, bs.block_kv), "dq": (bs.block_q_dq, bs.block_kv_dq),
             "dkv": (bs.block_q_dkv, bs.block_kv_dkv)}
    maps = {}
    for name, info in (("fwd", kernel.fwd_mask_info), ("dq", kernel.dq_mask_info), ("dkv", kernel.dkv_mask_info)):
        if info is None or info.block_mask is None:
            continue
        bq, bkv = tiles[name]
        dense = np.zeros((shape[0] // bq, shape[1] // bkv), np.int32)
        mask, nxt = np.asarray(info.block_mask)[0], np.asarray(info.data_next)[0]
        for i, j in zip(*np.nonzero(mask)):
            row, col = (nxt[i, j], j) if name == "dkv" else (i, nxt[i, j])
            dense[row, col] = mask[i, j]
        maps[name] = dense
    return maps


def _pad_axis(x: jax.Array, seg: Segments) -> jax.Array:
    """`[B, n_ref + n_tgt, ...]` -> `[B, seg.length, ...]` with zero padding after each segment."""
    if not seg.padded:
        return x
    pad = [(0, 0)] * x.ndim
    parts = []
    for part, size in ((x[:, : seg.n_ref], seg.ref_end), (x[:, seg.n_ref:], seg.length - seg.ref_end)):
        if size:
            pad[1] = (0, size - part.shape[1])
            parts.append(jnp.pad(part, pad))
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _unpad_axis(x: jax.Array, seg: Segments) -> jax.Array:
    if not seg.padded:
        return x
    return jnp.concatenate([x[:, : seg.n_ref], x[:, seg.ref_end: seg.tgt_end]], axis=1)


def _segment_ids(keep: jax.Array, seg: Segments) -> jax.Array:
    """Segment ids `[B, length]`: 0 everywhere when the reference is kept; target tokens 1 when it is dropped."""
    is_tgt = jnp.arange(seg.length) >= seg.ref_end
    return jnp.where(jnp.asarray(keep, bool)[:, None], 0, is_tgt[None, :].astype(jnp.int32)).astype(jnp.int32)


def _shard_mesh(config: AttentionConfig):
    """The mesh splash is shard_mapped over, or None (unsharded)."""
    if not config.shard_batch_axes and config.shard_head_axis is None:
        return None
    mesh = config.mesh if config.mesh is not None else jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return None
    wanted = (*config.shard_batch_axes, *([config.shard_head_axis] if config.shard_head_axis else []))
    missing = [axis for axis in wanted if axis not in mesh.axis_names]
    if missing:
        raise ValueError(f"AttentionConfig shard axes {missing} are not axes of the mesh {mesh.axis_names}")
    return mesh


def _call_kernel(kernel_for, q, k, v, ids, config: AttentionConfig):
    """vmap the kernel over the batch; under a mesh, inside shard_map over batch (and head) axes."""

    def local(q, k, v, ids):
        kernel = kernel_for(q.shape[1])
        if ids is None:
            return jax.vmap(kernel)(q, k, v)
        return jax.vmap(lambda a, b, c, s: kernel(a, b, c, segment_ids=s))(q, k, v, ids)

    mesh = _shard_mesh(config)
    if mesh is None:
        return local(q, k, v, ids)
    batch = tuple(config.shard_batch_axes) or None
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    n_batch = math.prod(sizes[a] for a in config.shard_batch_axes)
    n_heads = sizes[config.shard_head_axis] if config.shard_head_axis else 1
    if q.shape[0] % n_batch or q.shape[1] % n_heads:
        raise ValueError(f"splash shard_map: batch {q.shape[0]} / heads {q.shape[1]} not divisible by mesh axes "
                         f"{config.shard_batch_axes} ({n_batch}) / {config.shard_head_axis!r} ({n_heads})")
    spec = jax.sharding.PartitionSpec(batch, config.shard_head_axis, None, None)
    ids_spec = None if ids is None else sa.SegmentIds(*[jax.sharding.PartitionSpec(batch, None)] * 2)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, ids_spec), out_specs=spec, check_vma=False)
    return fn(q, k, v, ids)


def _run(q, k, v, q_seg: Segments, kv_seg: Segments, causal: bool, keep, block_sizes, config, interpret):
    """One splash kernel over padded layouts; q/k/v are `[B, L, H, D]` with real tokens only."""
    d, dtype = q.shape[-1], q.dtype
    q = (q.astype(jnp.float32) * (1.0 / math.sqrt(d))).astype(dtype)
    width = -(-d // max(config.head_multiple, 1)) * max(config.head_multiple, 1)
    q, k, v = (jnp.pad(x, [(0, 0)] * 3 + [(0, width - d)]) if width != d else x for x in (q, k, v))
    q = _pad_axis(q, q_seg).transpose(0, 2, 1, 3)
    k, v = (_pad_axis(x, kv_seg).transpose(0, 2, 1, 3) for x in (k, v))
    mask = build_mask(q_seg, kv_seg, causal)
    ids = None
    if keep is not None:
        ids = sa.SegmentIds(q=_segment_ids(keep, q_seg), kv=_segment_ids(keep, kv_seg))
    out = _call_kernel(lambda heads: make_kernel(mask, heads, block_sizes, interpret), q, k, v, ids, config)
    return _unpad_axis(out.transpose(0, 2, 1, 3), q_seg)[..., :d].astype(dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, n_ref_keys: int, ref_keep: jax.Array | None,
           config: AttentionConfig, interpret: bool) -> jax.Array:
    """Queries (one segment) against keys `[ref (n_ref_keys) ; rest]`, full mask; ref_keep hides the ref keys."""
    n_keys = k.shape[1]
    block_sizes, unit = fit_blocks(config, (q.shape[1], n_ref_keys, n_keys - n_ref_keys))
    q_seg = Segments.plan(0, q.shape[1], unit)
    kv_seg = Segments.plan(n_ref_keys, n_keys - n_ref_keys, unit)
    keep = ref_keep if n_ref_keys else None
    return _run(q, k, v, q_seg, kv_seg, False, keep, block_sizes, config, interpret)


def fused_plan(n_ref: int, n_tgt: int, config: AttentionConfig) -> tuple[Segments, sa.BlockSizes]:
    """Padded layout and tiles of the fused kernel over `[ref ; tgt]`."""
    block_sizes, unit = fit_blocks(config, (n_ref, n_tgt))
    return Segments.plan(n_ref, n_tgt, unit), block_sizes


def joint(q: jax.Array, k: jax.Array, v: jax.Array, *, n_ref: int, causal: bool, ref_keep: jax.Array | None,
          config: AttentionConfig, interpret: bool) -> jax.Array:
    """Joint `[ref ; tgt]` attention (arguments as `attention.attention`; 0 < n_ref < L), variant from config.

    The fused variant cannot express `interaction="full"` with `ref_keep` (segment ids are equality-only), so
    that combination always runs two passes.
    """
    n_tgt = q.shape[1] - n_ref
    if config.splash_variant == "fused" and (causal or ref_keep is None):
        seg, block_sizes = fused_plan(n_ref, n_tgt, config)
        return _run(q, k, v, seg, seg, causal, ref_keep, block_sizes, config, interpret)
    opts = dict(config=config, interpret=interpret)
    if causal:
        ref = attend(q[:, :n_ref], k[:, :n_ref], v[:, :n_ref], n_ref_keys=0, ref_keep=None, **opts)
    else:
        ref = attend(q[:, :n_ref], k, v, n_ref_keys=n_ref, ref_keep=None, **opts)
    tgt = attend(q[:, n_ref:], k, v, n_ref_keys=n_ref, ref_keep=ref_keep, **opts)
    return jnp.concatenate([ref, tgt], axis=1)


def cached(q: jax.Array, k: jax.Array, v: jax.Array, k_ref: jax.Array, v_ref: jax.Array, *,
           ref_keep: jax.Array | None, config: AttentionConfig, interpret: bool) -> jax.Array:
    """Target pass against the reference cache (arguments as `attention.attention_cached`, validated).

    Splash takes one K/V sequence per batch entry, so the cache is repeated over the entries that share it:
    this materialises `Bt * Lr * H * D` K/V elements (not logits), unlike the XLA path.
    """
    m = q.shape[0] // k_ref.shape[0]
    keys = jnp.concatenate([jnp.repeat(k_ref.astype(k.dtype), m, axis=0), k], axis=1)
    values = jnp.concatenate([jnp.repeat(v_ref.astype(v.dtype), m, axis=0), v], axis=1)
    return attend(q, keys, values, n_ref_keys=k_ref.shape[1], ref_keep=ref_keep, config=config, interpret=interpret)
