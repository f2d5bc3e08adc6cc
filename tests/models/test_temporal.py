"""One motion module (`TemporalTransformer`) against diffusers' `AnimateDiffTransformer3D` with random weights.

Tolerance: fp32 on CPU, max|delta| <= 1e-4 * max|ref| (the two sides sum in different orders; observed errors are
~1e-7 relative). Two videos per batch so that per-video GroupNorm statistics differ from per-batch ones; an odd
frame count and non-square maps so that a transposed reshape cannot pass by accident. `norm="frame"` is checked
against the same torch module with its GroupNorm applied frame by frame, which is what the original AnimateDiff
code does (it folds frames into the batch before `self.norm`).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D  # noqa: E402

from humandiff.models.temporal import TemporalTransformer, frame_positions  # noqa: E402
from humandiff.weights import io, keymap  # noqa: E402

B, F, H, W, C, HEADS, GROUPS, DEPTH, MAX_LEN = 2, 5, 3, 4, 16, 2, 4, 2, 8


class _PerFrameNorm(torch.nn.Module):
    """GroupNorm over each frame of a `[B, C, F, H, W]` tensor (the original AnimateDiff statistics)."""

    def __init__(self, norm):
        super().__init__()
        self.inner = norm

    def forward(self, x):
        b, c, f, h, w = x.shape
        y = self.inner(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


@pytest.fixture(scope="module")
def oracle():
    torch.manual_seed(0)
    mm = AnimateDiffTransformer3D(num_attention_heads=HEADS, attention_head_dim=C // HEADS, in_channels=C,
                                  num_layers=DEPTH, norm_num_groups=GROUPS, activation_fn="geglu",
                                  positional_embeddings="sinusoidal", num_positional_embeddings=MAX_LEN).eval()
    with torch.no_grad():  # every weight non-trivial, proj_out included (diffusers does not zero it)
        for p in mm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = np.random.default_rng(0).standard_normal((B * F, C, H, W)).astype(np.float32) * 2 + 0.5
    with torch.no_grad():
        ref_video = mm(torch.from_numpy(x), num_frames=F).numpy()
        mm.norm = _PerFrameNorm(mm.norm)
        ref_frame = mm(torch.from_numpy(x), num_frames=F).numpy()
        mm.norm = mm.norm.inner
    state = {k: v.numpy() for k, v in mm.state_dict().items()}
    params = io.unflatten({k: jnp.asarray(v) for k, v in keymap.state_dict_to_flat_flax(
        {k: v for k, v in state.items() if not k.endswith(".pe")}).items()})
    return state, params, x.transpose(0, 2, 3, 1), ref_video.transpose(0, 2, 3, 1), ref_frame.transpose(0, 2, 3, 1)


def _apply(params, x, norm):
    module = TemporalTransformer(HEADS, DEPTH, GROUPS, MAX_LEN, F, norm=norm)
    return np.asarray(jax.jit(lambda p, v: module.apply({"params": p}, v))(params, jnp.asarray(x)))


@pytest.mark.parametrize("norm", ["video", "frame"])
def test_motion_module_matches_diffusers(oracle, norm):
    _, params, x, ref_video, ref_frame = oracle
    ref = ref_video if norm == "video" else ref_frame
    out = _apply(params, x, norm)
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    print(f"AnimateDiffTransformer3D parity (norm={norm}): max|d|={err:.3e} max|ref|={scale:.3e} rel={err / scale:.3e}")
    assert err <= 1e-4 * scale
    # The two statistics really differ here, so each test pins down one of them.
    assert float(np.abs(ref_video - ref_frame).max()) > 1e-2 * scale


def test_parameter_names_and_positions_match_diffusers(oracle):
    state, params, *_ = oracle
    module = TemporalTransformer(HEADS, DEPTH, GROUPS, MAX_LEN, F)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((B * F, H, W, C))))["params"]
    ours = {k: v.shape for k, v in io.flatten(shapes).items()}
    theirs = {k: v.shape for k, v in keymap.state_dict_to_flat_flax(
        {k: v for k, v in state.items() if not k.endswith(".pe")}).items()}
    assert ours == theirs
    pe = [v for k, v in state.items() if k.endswith(".pe")]
    assert len(pe) == DEPTH  # one table per transformer block (diffusers: `transformer_blocks.k.pos_embed.pe`)
    np.testing.assert_allclose(frame_positions(MAX_LEN, C)[None], pe[0], rtol=0, atol=1e-6)
    del params


def test_fresh_motion_module_is_identity():
    module = TemporalTransformer(HEADS, 1, GROUPS, MAX_LEN, F)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((B * F, H, W, C)), jnp.float32)
    params = jax.jit(module.init)(jax.random.key(0, impl="rbg"), x)["params"]  # rbg: cheaper to compile
    assert not np.any(np.asarray(params["proj_out"]["kernel"])) and not np.any(np.asarray(params["proj_out"]["bias"]))
    np.testing.assert_array_equal(np.asarray(jax.jit(module.apply)({"params": params}, x)), np.asarray(x))


def test_motion_module_errors_name_the_value():
    x = jnp.zeros((B * F, H, W, C))
    with pytest.raises(ValueError, match="max_seq_length=4"):
        TemporalTransformer(HEADS, 1, GROUPS, 4, F).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="num_frames=3"):
        TemporalTransformer(HEADS, 1, GROUPS, MAX_LEN, 3).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="'pixel'"):
        TemporalTransformer(HEADS, 1, GROUPS, MAX_LEN, F, norm="pixel").init(jax.random.PRNGKey(0), x)


# --- SCD with motion modules, on a one-level UNet (compiles in seconds) -------------------------------------------
from humandiff.models import scd  # noqa: E402
from humandiff.models.init import numpy_init  # noqa: E402
from humandiff.models.unet import UNet2DConditionModel  # noqa: E402

TINY = dict(block_out_channels=(16,), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
            up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=8, attention_head_dim=2, norm_num_groups=8,
            motion_modules=True, motion_num_attention_heads=2, motion_max_seq_length=8)


@pytest.fixture(scope="module")
def tiny_video_unet():
    module = UNet2DConditionModel(**TINY)
    # numpy_init: random kernels everywhere, motion proj_out included, so the motion modules are not the identity.
    params = numpy_init(module, jnp.zeros((F, 4, 4, 4)), jnp.zeros((F,)), jnp.zeros((F, 2, 8)), num_frames=F)
    assert np.any(np.asarray(params["down_blocks_0"]["motion_modules_0"]["proj_out"]["kernel"]))
    rng = np.random.default_rng(2)
    z_ref = jnp.asarray(rng.standard_normal((B, 4, 4, 4)), jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((B, 2, 8)), jnp.float32)
    cache = jax.jit(lambda p: scd.reference_pass(module, p, z_ref, ctx))(params)
    return module, params, z_ref, ctx, rng, cache


def test_reference_cache_broadcasts_over_frames_with_motion_modules(tiny_video_unet):
    module, params, z_ref, ctx, rng, cache = tiny_video_unet
    assert all(v.shape[0] == B for v in jax.tree_util.tree_leaves(cache))  # one cache entry per video, not per frame
    z = jnp.asarray(rng.standard_normal((B * F, 4, 4, 4)), jnp.float32)
    ctx_f = jnp.repeat(ctx, F, axis=0)
    keep = jnp.asarray([True, False, True, True, True, False, True, True, True, True][:B * F])
    run = jax.jit(lambda p, c: scd.target_pass(module, p, c, z, 500.0, ctx_f, ref_keep=keep, num_frames=F))
    shared = np.asarray(run(params, cache))
    # Oracle: the same call with the cache copied once per frame (attention_cached's plain, unbroadcast path).
    copied = np.asarray(run(params, jax.tree_util.tree_map(lambda v: jnp.repeat(v, F, axis=0), cache)))
    err, scale = float(np.abs(shared - copied).max()), float(np.abs(copied).max())
    print(f"cache broadcast over {F} frames vs copied cache: max|d|={err:.3e} max|ref|={scale:.3e}")
    assert err <= 1e-5 * scale


def test_joint_form_equals_two_pass_with_motion_modules(tiny_video_unet):
    module, params, z_ref, ctx, rng, cache = tiny_video_unet
    z_tgt = jnp.asarray(rng.standard_normal(z_ref.shape), jnp.float32)
    # Without the joint-mode split in unet_blocks._motion the reference half would pass through the motion modules
    # (measured: max|d| 0.37 at max|ref| 1.44).
    _, joint = jax.jit(lambda p: scd.joint_pass(module, p, z_ref, z_tgt, 500.0, ctx))(params)
    two = jax.jit(lambda p, c: scd.target_pass(module, p, c, z_tgt, 500.0, ctx))(params, cache)
    err, scale = float(np.abs(np.asarray(joint) - np.asarray(two)).max()), float(np.abs(np.asarray(two)).max())
    print(f"joint vs two-pass with motion modules: max|d|={err:.3e} max|ref|={scale:.3e}")
    assert err <= 1e-5 * scale
    with pytest.raises(ValueError, match="two-pass form"):
        module.apply({"params": params}, jnp.zeros((2 * B * F, 4, 4, 4)), 0.0, jnp.zeros((2 * B * F, 2, 8)),
                     scd_mode="joint", num_frames=F)
