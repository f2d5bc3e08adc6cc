"""The fused splash kernel's tile plan: the lazy reference-first mask, skipped tiles, tile fitting, auto choice.

The skip test reads the kernel's public `fwd_mask_info` / `dq_mask_info` / `dkv_mask_info` (splash MaskInfo
named tuples) through `splash.block_maps`, and cross-checks them against tiles of the lazy mask itself.
"""

import numpy as np
import pytest

from humandiff.ops import attention as attn
from humandiff.ops import splash

TILES = attn.AttentionConfig(**{name: 128 for name in attn.AttentionConfig().blocks()})


def _dense(mask):
    return mask[0: mask.shape[0], 0: mask.shape[1]]


def test_fused_kernel_skips_exactly_the_reference_to_target_quadrant():
    n = 256  # ref = tgt = 2 tiles of 128
    seg, block_sizes = splash.fused_plan(n, n, TILES)
    mask = splash.build_mask(seg, seg, causal=True)
    assert isinstance(mask, splash.RefFirstMask) and seg.length == 2 * n
    kernel = splash.make_kernel(mask, 2, block_sizes, True)
    expected = np.full((4, 4), 2)
    expected[:2, 2:] = 0  # reference rows x target columns: empty
    maps = splash.block_maps(kernel, mask.shape)
    assert set(maps) == {"fwd", "dq", "dkv"}
    for name, got in maps.items():
        np.testing.assert_array_equal(got, expected, err_msg=name)
    for info in (kernel.fwd_mask_info, kernel.dq_mask_info, kernel.dkv_mask_info):
        assert info.partial_mask_blocks is None  # no partial tiles: no per-element masking anywhere
    # The same map from the lazy mask's own tiles.
    tiles = np.array([[mask[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].all() * 2 for j in range(4)]
                      for i in range(4)])
    np.testing.assert_array_equal(tiles, expected)


def test_unaligned_segments_are_padded_per_segment_and_only_boundary_tiles_are_partial():
    seg, block_sizes = splash.fused_plan(200, 184, TILES)
    assert (seg.n_ref, seg.ref_end, seg.n_tgt, seg.length) == (200, 256, 184, 512)
    mask = splash.build_mask(seg, seg, causal=True)
    maps = splash.block_maps(splash.make_kernel(mask, 1, block_sizes, True), mask.shape)
    # Column 1 holds ref keys 128..199 + padding, column 3 target keys 384..439 + padding: partial (1).
    expected = np.array([[2, 1, 0, 0], [2, 1, 0, 0], [2, 1, 2, 1], [2, 1, 2, 1]])
    np.testing.assert_array_equal(maps["fwd"], expected)


def test_lazy_mask_matches_dense_definition():
    q = splash.Segments.plan(200, 184, 128)
    mask = splash.RefFirstMask(q, q, causal=True)
    rows, cols = np.arange(512)[:, None], np.arange(512)[None, :]
    valid_key = (cols < 200) | ((cols >= 256) & (cols < 440))
    want = valid_key & ((rows >= 256) | (cols < 200))
    np.testing.assert_array_equal(_dense(mask), want)
    np.testing.assert_array_equal(mask[130:300, 5:400], want[130:300, 5:400])
    assert _dense(mask).any(axis=1).all()  # every row, padding included, sees a key
    full = splash.RefFirstMask(q, q, causal=False)
    np.testing.assert_array_equal(_dense(full), np.broadcast_to(valid_key, (512, 512)))
    assert hash(mask) == hash(splash.RefFirstMask(q, q, causal=True)) and mask != full


def test_tile_fitting_adapts_pads_or_raises():
    config = attn.AttentionConfig()  # 1024-token tiles, 512 kv-compute: all halved together
    block_sizes, unit = splash.fit_blocks(config, (2304, 2304))
    assert unit == 256 and block_sizes.block_q == 256 and block_sizes.block_kv_compute == 128  # ratio kept
    assert splash.fit_blocks(config, (9216, 9216))[1] == 1024
    assert splash.fit_blocks(config, (200, 184))[1] == 128
    strict = config.replace(adapt_blocks=False, pad_unaligned=False)
    with pytest.raises(ValueError, match="segment length 300 is not a multiple of the tile 1024"):
        splash.fit_blocks(strict, (300, 1024))
    with pytest.raises(ValueError, match="block_q=100 must be a positive multiple of 128"):
        attn.AttentionConfig(block_q=100)
    with pytest.raises(ValueError, match="splash_variant='both'"):
        attn.AttentionConfig(splash_variant="both")


def test_auto_choice_per_backend_and_length():
    config = attn.AttentionConfig(min_seq_len_tpu=4096, min_seq_len_gpu=2048)
    assert attn.resolve_impl("auto", 8192, config, backend="tpu") == "splash"
    assert attn.resolve_impl("auto", 2048, config, backend="tpu") == "xla"
    assert attn.resolve_impl("auto", 2048, config, backend="gpu") == "cudnn"
    assert attn.resolve_impl("auto", 1024, config, backend="gpu") == "xla"
    assert attn.resolve_impl("auto", 1 << 20, config, backend="cpu") == "xla"
    assert attn.resolve_impl("interpret", 16, config, backend="cpu") == "interpret"
