"""UNet options: config validation errors, remat (same gradients), bf16 compute (params stay fp32), pose injection,
the pose encoder's coordinate channels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from humandiff.models import scd
from humandiff.models.init import numpy_init
from humandiff.models.pose_encoder import PoseEncoder, coordinate_grid
from humandiff.models.unet import UNet2DConditionModel

TINY = dict(block_out_channels=(16,), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=8, attention_head_dim=2, norm_num_groups=8)


@pytest.mark.parametrize("key,value,match", [
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "unsupported mid_block_type='UNetMidBlock2DSimpleCrossAttn'"),
    ("up_block_types", ["UpBlock3D"], r"unknown up_block_types\[0\]='UpBlock3D'"),
    ("addition_embed_type", "text_time", "unsupported addition_embed_type='text_time'"),
    ("num_attention_heads", 8, "unsupported num_attention_heads=8"),
    ("my_new_key", 1, "unknown UNet config key 'my_new_key'"),
    ("attention_head_dim", [2, 2], r"attention_head_dim=\[2, 2\] must have one entry per block"),
])
def test_unsupported_config_values_are_named(key, value, match):
    with pytest.raises(ValueError, match=match):
        UNet2DConditionModel.from_config({**TINY, key: value}, source="unet/config.json")


def test_bad_scd_usage_is_explained():
    unet = UNet2DConditionModel(**TINY)
    z, c = jnp.zeros((2, 4, 4, 4)), jnp.zeros((2, 1, 8))
    params = numpy_init(unet, z, jnp.zeros((2,)), c)
    with pytest.raises(ValueError, match="no reference K/V for layer"):
        jax.eval_shape(lambda p: unet.apply({"params": p}, z, 1.0, c, scd_mode="read"), params)
    with pytest.raises(ValueError, match="unknown scd_mode 'reed'"):
        jax.eval_shape(lambda p: unet.apply({"params": p}, z, 1.0, c, scd_mode="reed"), params)


@pytest.mark.slow
def test_remat_same_grads_and_bf16_runs():
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 6, 4))
    c = jnp.ones((2, 1, 8))
    results = {}
    for remat, dtype in [(False, jnp.float32), (True, jnp.float32), (True, jnp.bfloat16)]:
        unet = UNet2DConditionModel(**TINY, remat=remat, dtype=dtype)
        params = numpy_init(unet, z, jnp.zeros((2,)), c)

        def loss(p, unet=unet):
            cache = scd.reference_pass(unet, p, z, c)
            return jnp.mean(scd.target_pass(unet, p, cache, 0.5 * z, 3.0, c).astype(jnp.float32) ** 2)

        results[(remat, dtype)] = jax.jit(jax.value_and_grad(loss))(params)
    (v0, g0), (v1, g1), (v2, g2) = results.values()
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: np.allclose(a, b, atol=1e-5), g0, g1))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(g2))
    assert abs(float(v2) - float(v0)) < 0.05 * abs(float(v0))


def test_pose_injection_at_input_adds_to_the_latent():
    unet = UNet2DConditionModel(**TINY, pose_injection="input")
    rng = np.random.default_rng(0)
    z, feats = (jnp.asarray(rng.standard_normal((2, 4, 4, 4), np.float32)) for _ in range(2))
    c = jnp.ones((2, 1, 8))
    params = numpy_init(unet, z, jnp.zeros((2,)), c)
    run = jax.jit(lambda zz, f: unet.apply({"params": params}, zz, 5.0, c, pose_features=f))
    np.testing.assert_allclose(run(z, feats), run(z + feats, jnp.zeros_like(feats)), rtol=0, atol=1e-5)


def test_full_sd15_scd_passes_trace_at_512px():
    """Shapes only (jax.eval_shape): SD-1.5 at 64x64 latents, reference write then a 2-frame target read."""
    unet = UNet2DConditionModel(cross_attention_dim=768)
    z, c = jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float32), jax.ShapeDtypeStruct((1, 1, 768), jnp.float32)
    params = jax.eval_shape(lambda a, b: unet.init(jax.random.PRNGKey(0), a, jnp.zeros((1,)), b), z, c)["params"]
    cache = jax.eval_shape(lambda p, a, b: scd.reference_pass(unet, p, a, b), params, z, c)
    sizes = sorted({x.shape[1:] for x in jax.tree_util.tree_leaves(cache)})
    # 16 spatial self-attentions; head dims 40 / 80 / 160 at 64x64 / 32x32 / 16x16 (and 8x8 in the mid block).
    assert len(jax.tree_util.tree_leaves(cache)) == 32
    assert sizes == [(64, 8, 160), (256, 8, 160), (1024, 8, 80), (4096, 8, 40)]
    z2, c2 = jax.ShapeDtypeStruct((2, 64, 64, 4), jnp.float32), jax.ShapeDtypeStruct((2, 1, 768), jnp.float32)
    read = lambda p, k, a, b: scd.target_pass(unet, p, k, a, 10.0, b, num_frames=2)  # noqa: E731
    out = jax.eval_shape(read, params, cache, z2, c2)
    assert out.shape == (2, 64, 64, 4)


def test_pose_encoder_coordinate_channels_give_position():
    """On a blank pose image, features far from the border are the same everywhere without coordinates (a conv
    stack cannot tell interior pixels apart) and differ with them; the grid runs -1 -> 1 over rows and columns."""
    blank = jnp.zeros((1, 12, 12, 3))
    grid = np.asarray(coordinate_grid(1, 12, 12))
    assert grid.shape == (1, 12, 12, 2) and grid[0, 0, 0].tolist() == [-1, -1] and grid[0, -1, -1].tolist() == [1, 1]
    assert np.all(np.diff(grid[0, :, 0, 0]) > 0) and np.all(grid[0, 0, :, 0] == -1)  # channel 0: the row
    interior = {}
    for coords in (False, True):
        enc = PoseEncoder(out_channels=4, block_out_channels=(8,), coord_channels=coords)
        params = numpy_init(enc, blank)
        assert params["conv_in"]["kernel"].shape == (3, 3, 5 if coords else 3, 8)
        feats = np.asarray(enc.apply({"params": params}, blank))[0, 3:9, 3:9]
        interior[coords] = np.abs(feats - feats[:1, :1]).max()
    assert interior[False] < 1e-6 < 1e-2 < interior[True]
