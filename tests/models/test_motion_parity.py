"""AnimateDiff motion modules: parity with diffusers' `UNetMotionModel` (tiny `UNet2DConditionModel` +
`MotionAdapter`, CPU, fp32, max|delta| <= 1e-4 * max|ref|), the original-layout key map, export round trips, and
identity at zero init (per-frame output of the video model == image model)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from humandiff.models.temporal import TemporalTransformer  # noqa: E402
from humandiff.weights import io, load_unet  # noqa: E402
from humandiff.weights.diffusers import save_unet  # noqa: E402
from humandiff.weights.motion import diffusers_to_original, motion_to_torch, save_motion_adapter  # noqa: E402

UNET = dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=(2, 4),
            norm_num_groups=8, sample_size=8)
ADAPTER = dict(block_out_channels=(16, 32), motion_layers_per_block=1, motion_num_attention_heads=(2, 4),
               motion_norm_num_groups=8, motion_max_seq_length=8, motion_transformer_layers_per_block=(1, 2))
B, F, H, W = 1, 3, 8, 6


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**UNET).eval()
    adapter = diffusers.MotionAdapter(**ADAPTER).eval()
    with torch.no_grad():  # diffusers does not zero-init proj_out; make every motion weight clearly non-trivial
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("motion")
    unet.save_pretrained(root / "unet")
    adapter.save_pretrained(root / "adapter")
    model = diffusers.UNetMotionModel.from_unet2d(unet, adapter).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 4, F, H, W)).astype(np.float32)
    ctx = rng.standard_normal((B, 2, 8)).astype(np.float32)
    with torch.no_grad():
        # This diffusers version expects the context already repeated per frame ([B*F, S, D]).
        ref = model(torch.from_numpy(x), 30, torch.from_numpy(np.repeat(ctx, F, axis=0))).sample.numpy()
    return root, adapter, x, ctx, ref


def _run(module, params, x, ctx):
    frames = jnp.asarray(x.transpose(0, 2, 3, 4, 1).reshape(B * F, H, W, 4))
    context = jnp.repeat(jnp.asarray(ctx), F, axis=0)
    out = jax.jit(lambda p, s, c: module.apply({"params": p}, s, 30.0, c, num_frames=F))(params, frames, context)
    return np.asarray(out).reshape(B, F, H, W, 4).transpose(0, 4, 1, 2, 3)


def test_motion_unet_matches_diffusers(oracle):
    root, _, x, ctx, ref = oracle
    module, params = load_unet(str(root / "unet"), motion_adapter=str(root / "adapter"))
    out = _run(module, params, x, ctx)
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    print(f"UNetMotionModel parity max|d|={err:.3e} max|ref|={scale:.3e} rel={err / scale:.3e}")
    assert err <= 1e-4 * scale


def test_original_layout_and_export_round_trip(oracle, tmp_path):
    root, adapter, *_ = oracle
    module, params = load_unet(str(root / "unet"), motion_adapter=str(root / "adapter"))
    state = {k: v.numpy() for k, v in adapter.state_dict().items()}
    # Export in diffusers layout == the adapter's own state dict (position tables included).
    exported = motion_to_torch(params, layout="diffusers", max_seq_length=8)
    assert sorted(exported) == sorted(state)
    for k, v in state.items():
        np.testing.assert_allclose(exported[k], v, rtol=0, atol=1e-6 if k.endswith(".pe") else 0, err_msg=k)
    # A file written in the original AnimateDiff layout loads to the same parameters.
    original = diffusers_to_original(state, max_seq_length=8)
    assert any(".temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe" in k for k in original)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in original.items()}
    save_file(tensors, str(tmp_path / "mm.safetensors"))
    _, params2 = load_unet(str(root / "unet"), motion_adapter=str(tmp_path / "mm.safetensors"),
                           motion_num_attention_heads=(2, 4), motion_transformer_layers_per_block=(1, 2))
    for k, v in io.flatten(params).items():
        np.testing.assert_array_equal(np.asarray(io.flatten(params2)[k]), np.asarray(v), err_msg=k)
    exported_original = motion_to_torch(params, layout="original", max_seq_length=8)
    assert sorted(exported_original) == sorted(original)


def test_zero_init_motion_modules_are_identity(oracle):
    root, _, x, ctx, _ = oracle
    # A motion module's own init zeroes proj_out (kernel and bias) ...
    mm = TemporalTransformer(heads=2, groups=8, num_frames=F)
    mm_params = jax.jit(mm.init)(jax.random.key(0, impl="rbg"), jnp.ones((B * F, 2, 2, 16)))["params"]
    assert not np.any(np.asarray(mm_params["proj_out"]["kernel"]))
    assert not np.any(np.asarray(mm_params["proj_out"]["bias"]))
    # ... so a video UNet whose motion modules have zero proj_out gives the image UNet's per-frame output.
    # (Same module and shapes as the parity test, so its compiled program is reused.)
    video, params = load_unet(str(root / "unet"), motion_adapter=str(root / "adapter"))
    image, image_params = load_unet(str(root / "unet"))
    flat = io.flatten(params)
    flat = {k: (jnp.zeros_like(v) if "/proj_out/" in k and "/motion_modules_" in k else v) for k, v in flat.items()}
    np.testing.assert_allclose(_run(video, io.unflatten(flat), x, ctx), _run(image, image_params, x, ctx),
                               rtol=0, atol=1e-6)


@pytest.mark.slow
def test_scd_video_target_pass_with_motion_modules(oracle):
    from humandiff.models import scd  # pylint: disable=import-outside-toplevel

    root, _, x, ctx, _ = oracle
    module, params = load_unet(str(root / "unet"), motion_adapter=str(root / "adapter"))
    z_ref = jnp.asarray(x[:, :, 0].transpose(0, 2, 3, 1))  # one reference image per video
    # The reference pass is an image pass: motion modules are skipped, the cache holds only spatial K/V.
    cache = jax.jit(lambda p: scd.reference_pass(module, p, z_ref, jnp.asarray(ctx)))(params)
    assert all("motion_modules" not in k for k in io.flatten(cache))
    frames = jnp.asarray(x.transpose(0, 2, 3, 4, 1).reshape(B * F, H, W, 4))
    context = jnp.repeat(jnp.asarray(ctx), F, axis=0)
    target = jax.jit(lambda p, c: scd.target_pass(module, p, c, frames, 30.0, context, num_frames=F))
    plain = _run(module, params, x, ctx)
    empty = np.asarray(target(params, scd.empty_cache(cache))).reshape(B, F, H, W, 4).transpose(0, 4, 1, 2, 3)
    np.testing.assert_allclose(empty, plain, rtol=0, atol=1e-5 * float(np.abs(plain).max()))


def test_save_unet_and_motion_adapter_reload_in_diffusers(oracle, tmp_path):
    root, adapter, *_ = oracle
    module, params = load_unet(str(root / "unet"), motion_adapter=str(root / "adapter"))
    save_unet(str(tmp_path / "unet"), module, params)
    save_motion_adapter(str(tmp_path / "adapter"), module, params)
    diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "unet"))  # no motion keys in the image UNet
    again = diffusers.MotionAdapter.from_pretrained(str(tmp_path / "adapter"))
    assert tuple(again.config.motion_num_attention_heads) == tuple(adapter.config.motion_num_attention_heads)
    for k, v in adapter.state_dict().items():
        np.testing.assert_allclose(again.state_dict()[k].numpy(), v.numpy(), rtol=0, atol=1e-6, err_msg=k)
