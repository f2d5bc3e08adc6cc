"""`humandiff.torch_scd` on a stock diffusers UNet equals humandiff's JAX UNet (no training checkpoint needed):
the SCD write/read path with the target batch a multiple of the cache batch (frames x CFG branches) and ref_keep
masking, for both pose-injection points; and the motion-module export (diffusers MotionAdapter folder + original
AnimateDiff layout) that diffusers loads with no missing keys and that reads back bit-identically.

Tolerance: <= 1e-4 relative (max|delta| / max|jax|), fp32 on both sides (summation order only).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
import humandiff.models.unet  # noqa: F401  (fails loudly if broken)
import humandiff.weights.motion  # noqa: F401  (fails loudly if broken)

import jax  # noqa: E402

from humandiff import torch_scd  # noqa: E402
from humandiff.models.init import numpy_init  # noqa: E402
from humandiff.models.unet import UNet2DConditionModel  # noqa: E402
from humandiff.weights import io, load_unet  # noqa: E402
from humandiff.checkpoints import export  # noqa: E402
from humandiff.weights.diffusers import unet_param_shapes  # noqa: E402

from .conftest import rel_err  # noqa: E402

UNET = dict(block_out_channels=(16, 32), layers_per_block=1, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=8, attention_head_dim=(2, 4), norm_num_groups=8)
BR, M, H, W = 2, 3, 8, 6  # 2 references, 3 target entries per reference (e.g. frames x CFG branches)


def _params(module, seed):
    shapes = unet_param_shapes(module)
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in shapes.items():  # lecun-normal kernels, unit-ish scales, non-zero biases
        if key.endswith("kernel"):
            flat[key] = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        else:
            flat[key] = (key.endswith("scale") + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return io.unflatten(flat)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, -3)))


@pytest.mark.parametrize("injection", ["conv_in", "input"])
def test_processors_match_jax_write_read(injection, tmp_path):
    module = UNet2DConditionModel(**UNET, pose_injection=injection)
    params = _params(module, 0)
    export.write_unet(str(tmp_path / "unet"), module, params, "fp32")
    unet = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    scd_unet = torch_scd.SCDUNet(unet, injection)
    rng = np.random.default_rng(1)
    pose_ch = 16 if injection == "conv_in" else 4
    z_ref = rng.standard_normal((BR, H, W, 4)).astype(np.float32)
    ctx_ref = rng.standard_normal((BR, 1, 8)).astype(np.float32)
    f_ref = rng.standard_normal((BR, H, W, pose_ch)).astype(np.float32)
    z = rng.standard_normal((BR * M, H, W, 4)).astype(np.float32)
    ctx = rng.standard_normal((BR * M, 1, 8)).astype(np.float32)
    feats = rng.standard_normal((BR * M, H, W, pose_ch)).astype(np.float32)
    t = np.linspace(50, 900, BR * M).astype(np.float32)
    keep = np.array([True, False, True, True, True, False])

    @jax.jit
    def run(p):
        _, cache = module.apply({"params": p}, z_ref, 0.0, ctx_ref, pose_features=f_ref, scd_mode="write",
                                mutable=["ref_kv"])
        return module.apply({"params": p, **cache}, z, t, ctx, pose_features=feats, scd_mode="read", ref_keep=keep)

    out = run(params)
    with torch.no_grad():
        scd_unet(nchw(z_ref), 0.0, torch.from_numpy(ctx_ref), pose_features=nchw(f_ref), scd_mode="write")
        got = scd_unet(nchw(z), torch.from_numpy(t), torch.from_numpy(ctx), pose_features=nchw(feats),
                       scd_mode="read", ref_keep=torch.from_numpy(keep))
    err = rel_err(np.moveaxis(got.numpy(), 1, -1), out)
    print(f"SCD write/read ({injection} injection, target batch {BR}x{M}): relative error {err:.2e}")
    assert err <= 1e-4
    assert len(scd_unet.names) == 4  # attn1 of 1 down, 1 mid and 2 up transformers
    scd_unet.remove()  # processors restored: a plain call ignores the state
    assert all(not isinstance(p, torch_scd.SCDAttnProcessor) for p in unet.attn_processors.values())


def test_read_without_reference_pass_is_a_clear_error(tmp_path):
    module = UNet2DConditionModel(**UNET)
    export.write_unet(str(tmp_path / "unet"), module, _params(module, 0), "fp32")
    scd_unet = torch_scd.SCDUNet(diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet"))
    with pytest.raises(ValueError, match="run the reference pass first"):
        scd_unet(torch.zeros(1, 4, H, W), 10.0, torch.zeros(1, 1, 8), scd_mode="read")
    with pytest.raises(ValueError, match="pose_injection"):
        torch_scd.SCDUNet(scd_unet.unet, "middle")


def test_motion_modules_export_round_trip(tmp_path):
    module = UNet2DConditionModel(**UNET, motion_modules=True, motion_num_attention_heads=(2, 4),
                                  motion_max_seq_length=8)
    params = _params(module, 2)
    out = str(tmp_path)
    export.write_unet(os.path.join(out, "unet"), module, params, "fp32")
    assert export.write_motion(out, module, params, "fp32") == ["motion_adapter", "motion_module.safetensors"]
    unet, info = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(out, "unet"), output_loading_info=True)
    assert not any(info.values()), info
    adapter, info = diffusers.MotionAdapter.from_pretrained(os.path.join(out, "motion_adapter"),
                                                            output_loading_info=True)
    assert not any(info.values()), info
    original = io.read_state_dict(os.path.join(out, "motion_module.safetensors"))
    assert any(".temporal_transformer." in k for k in original) and any(k.endswith("pos_encoder.pe") for k in original)
    # Flax -> torch -> Flax, bit for bit, through both motion layouts.
    for motion in (os.path.join(out, "motion_adapter"), os.path.join(out, "motion_module.safetensors")):
        _, back = load_unet(os.path.join(out, "unet"), motion_adapter=motion, motion_num_attention_heads=(2, 4))
        want, got = io.flatten(params), io.flatten(back)
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=f"{motion}: {key}")


def test_video_target_pass_with_motion_modules_matches_jax(tmp_path):
    """Reference pass on the 2D UNet (humandiff skips motion modules there), target pass on diffusers'
    `UNetMotionModel` built from the exported unet/ + motion_adapter/, sharing one cache: 2 videos (e.g. CFG
    branches) x 3 frames reading one reference, the second video with the reference masked out."""
    module = UNet2DConditionModel(**UNET, motion_modules=True, motion_num_attention_heads=(2, 4),
                                  motion_max_seq_length=8)
    params = _params(module, 3)
    export.write_unet(str(tmp_path / "unet"), module, params, "fp32")
    export.write_motion(str(tmp_path), module, params, "fp32")
    unet2d = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    adapter = diffusers.MotionAdapter.from_pretrained(tmp_path / "motion_adapter")
    video = diffusers.UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    ref_unet = torch_scd.SCDUNet(unet2d)
    video_unet = torch_scd.SCDUNet(video, state=ref_unet.state)
    frames, n = 3, 6
    rng = np.random.default_rng(4)
    z_ref = rng.standard_normal((1, H, W, 4)).astype(np.float32)
    ctx_ref = rng.standard_normal((1, 1, 8)).astype(np.float32)
    z = rng.standard_normal((n, H, W, 4)).astype(np.float32)
    ctx = np.repeat(ctx_ref, n, axis=0)
    feats = rng.standard_normal((n, H, W, 16)).astype(np.float32)
    keep = np.array([True] * frames + [False] * frames)

    @jax.jit
    def run(p):
        _, cache = module.apply({"params": p}, z_ref, 0.0, ctx_ref, scd_mode="write", mutable=["ref_kv"])
        return module.apply({"params": p, **cache}, z, 400.0, ctx, pose_features=feats, scd_mode="read",
                            ref_keep=keep, num_frames=frames)

    out = run(params)
    with torch.no_grad():
        ref_unet(nchw(z_ref), 0.0, torch.from_numpy(ctx_ref), scd_mode="write")
        got = video_unet(nchw(z), 400.0, torch.from_numpy(ctx), pose_features=nchw(feats), scd_mode="read",
                         ref_keep=torch.from_numpy(keep), num_frames=frames)
    err = rel_err(np.moveaxis(got.numpy(), 1, -1), out)
    print(f"SCD video target pass with motion modules ({n // frames} videos x {frames} frames): "
          f"relative error {err:.2e}")
    assert err <= 1e-4
