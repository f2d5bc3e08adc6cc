"""Motion-module weights: original AnimateDiff layout (pickle opt-in, layout read from keys), validator messages,
and export to both layouts round-tripping bit-identically. No forward passes here (shapes come from
`jax.eval_shape`); output parity lives in tests/models/test_motion_parity.py and tests/models/test_temporal.py."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from humandiff.weights import io, load_unet  # noqa: E402
from humandiff.weights.motion import (convert_to_safetensors, diffusers_to_original, main,  # noqa: E402
                                      motion_to_torch, read_motion_adapter, save_motion_adapter,
                                      save_motion_original)

UNET = dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=(2, 4),
            norm_num_groups=8, sample_size=8)
ADAPTER = dict(block_out_channels=(16, 32), motion_layers_per_block=1, motion_num_attention_heads=(2, 4),
               motion_norm_num_groups=8, motion_max_seq_length=8, motion_transformer_layers_per_block=(1, 2))
HEADS = {"motion_num_attention_heads": (2, 4)}  # the original layout has no config; heads cannot be read from keys


def _state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("mm")
    diffusers.UNet2DConditionModel(**UNET).save_pretrained(root / "unet")
    adapter = diffusers.MotionAdapter(**ADAPTER)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adapter.save_pretrained(root / "adapter")
    v1 = diffusers.MotionAdapter(**{**ADAPTER, "use_motion_mid_block": False, "motion_max_seq_length": 6})
    original = diffusers_to_original(_state(adapter), max_seq_length=8)
    original_v1 = diffusers_to_original(_state(v1), max_seq_length=6)
    save_file(original_v1, str(root / "mm_v1.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in original.items()}, root / "mm_v2.ckpt")  # a pickle, as published
    module, params = load_unet(str(root / "unet"), motion_adapter=str(root / "adapter"))
    return root, _state(adapter), original, module, params


def _flat(params):
    return {k: np.asarray(v) for k, v in io.flatten(params).items()}


def _assert_same(a, b):
    a, b = _flat(a), _flat(b)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_original_layout_keys(folders):
    _, _, original, _, _ = folders
    prefix = "down_blocks.1.motion_modules.0.temporal_transformer."
    for key in ("proj_in.weight", "norm.weight", "proj_out.bias", "transformer_blocks.1.attention_blocks.0.to_q.weight",
                "transformer_blocks.1.attention_blocks.1.to_out.0.weight", "transformer_blocks.0.norms.1.bias",
                "transformer_blocks.0.ff_norm.weight", "transformer_blocks.0.ff.net.0.proj.weight",
                "transformer_blocks.0.attention_blocks.1.pos_encoder.pe"):
        assert prefix + key in original, key
    assert "mid_block.motion_modules.0.temporal_transformer.proj_in.weight" in original
    assert not any(".attn1." in k or ".norm1." in k for k in original)


def test_pickle_needs_opt_in_then_loads_the_same_params(folders):
    root, _, _, module, params = folders
    with pytest.raises(io.WeightsError, match=r"mm_v2\.ckpt is a pickle file.*allow_pickle=True"):
        read_motion_adapter(str(root / "mm_v2.ckpt"))
    module2, params2 = load_unet(str(root / "unet"), motion_adapter=str(root / "mm_v2.ckpt"), allow_pickle=True,
                                 **HEADS)
    _assert_same(params, params2)
    # Depths and the mid block are read from the keys; diffusers' GroupNorm statistics unless asked otherwise.
    assert module2.motion_transformer_layers_per_block == (1, 2) and module2.use_motion_mid_block
    assert module2.motion_max_seq_length == 8 and module2.motion_norm == "video"
    module3, _ = load_unet(str(root / "unet"), motion_adapter=str(root / "mm_v2.ckpt"), allow_pickle=True,
                           motion_norm="frame", **HEADS)
    assert module3.motion_norm == "frame"


def test_convert_pickle_to_safetensors(folders, tmp_path, capsys):
    root, _, original, _, _ = folders
    with pytest.raises(io.WeightsError, match="allow_pickle=True"):
        convert_to_safetensors(str(root / "mm_v2.ckpt"), str(tmp_path / "mm.safetensors"))
    main([str(root / "mm_v2.ckpt"), str(tmp_path / "mm.safetensors"), "--allow-pickle"])
    assert capsys.readouterr().out.strip().endswith("mm.safetensors")
    converted = load_file(str(tmp_path / "mm.safetensors"))
    assert sorted(converted) == sorted(original)
    for k, v in original.items():
        np.testing.assert_array_equal(converted[k], v, err_msg=k)


def test_original_layout_without_mid_block(folders):
    root, *_ = folders
    fields, state = read_motion_adapter(str(root / "mm_v1.safetensors"))
    assert fields["use_motion_mid_block"] is False and fields["motion_max_seq_length"] == 6
    assert not any(k.startswith("mid_block.") for k in state)
    module, params = load_unet(str(root / "unet"), motion_adapter=str(root / "mm_v1.safetensors"), **HEADS)
    assert not any("mid_block/motion_modules" in k for k in _flat(params))
    assert module.use_motion_mid_block is False


def test_validator_names_missing_unexpected_and_mismatched_keys(folders, tmp_path):
    root, _, original, _, _ = folders
    bad = dict(original)
    gone = "up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.ff_norm.weight"
    del bad[gone]
    bad["down_blocks.0.motion_modules.0.temporal_transformer.extra.weight"] = np.zeros((2, 2), np.float32)
    shape_key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"
    bad[shape_key] = np.zeros((16, 8), np.float32)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(io.WeightsError) as info:
        load_unet(str(root / "unet"), motion_adapter=str(tmp_path / "bad.safetensors"), **HEADS)
    msg = str(info.value)
    assert "bad.safetensors" in msg
    assert "missing (1): up_blocks.1.motion_modules.1.transformer_blocks.0.norm3.weight " \
           "(up_blocks_1/motion_modules_1/transformer_blocks_0/norm3/scale)" in msg  # diffusers' name, then ours
    assert "unexpected (1): down_blocks.0.motion_modules.0.extra.weight " \
           "(down_blocks_0/motion_modules_0/extra/kernel)" in msg
    assert "proj_in.weight (down_blocks_0/motion_modules_0/proj_in/kernel): expected (16, 16), got (8, 16)" in msg
    short = dict(original)
    pe = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
    short[pe] = short[pe][:, :4]
    save_file(short, str(tmp_path / "short.safetensors"))
    with pytest.raises(io.WeightsError, match=r"short\.safetensors.*pos_encoder\.pe has shape \(1, 4, 16\)"):
        read_motion_adapter(str(tmp_path / "short.safetensors"), motion_max_seq_length=8)
    learned = dict(original)
    learned[pe] = learned[pe] + 0.01
    save_file(learned, str(tmp_path / "learned.safetensors"))
    with pytest.raises(io.WeightsError, match=r"learned\.safetensors: .*pos_encoder\.pe is not the sinusoidal"):
        read_motion_adapter(str(tmp_path / "learned.safetensors"))
    for change, message in (({"motion_norm_num_groups": 4}, "motion_norm_num_groups=4 differs from the UNet's "
                             "norm_num_groups=8"), ({"motion_layers_per_block": 2}, "motion_layers_per_block=2 "
                             "differs from the UNet's layers_per_block=1")):
        folder = tmp_path / next(iter(change))
        diffusers.MotionAdapter(**{**ADAPTER, **change}).save_pretrained(folder)
        with pytest.raises(io.WeightsError, match=message):
            load_unet(str(root / "unet"), motion_adapter=str(folder))
    save_file({"conv_in.weight": np.zeros((1,), np.float32)}, str(tmp_path / "unet_only.safetensors"))
    with pytest.raises(io.WeightsError, match="no '.*motion_modules.*' keys"):
        read_motion_adapter(str(tmp_path / "unet_only.safetensors"))


def test_export_round_trips_bit_identically(folders, tmp_path):
    root, adapter_state, original, module, params = folders
    # diffusers layout: a MotionAdapter folder that diffusers reads back to the very same tensors.
    folder = save_motion_adapter(str(tmp_path / "adapter"), module, params)
    reloaded = _state(diffusers.MotionAdapter.from_pretrained(folder))
    assert sorted(reloaded) == sorted(adapter_state)
    for k, v in adapter_state.items():
        if k.endswith(".pe"):  # regenerated sinusoids (NumPy vs torch sin/exp: last-ulp differences)
            np.testing.assert_allclose(reloaded[k], v, rtol=0, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(reloaded[k], v, err_msg=k)
    _, params_a = load_unet(str(root / "unet"), motion_adapter=folder)
    _assert_same(params, params_a)
    # Original layout: same key set as the published layout; parameters bit-identical after a reload.
    path = save_motion_original(str(tmp_path / "mm.safetensors"), module, params)
    written = load_file(path)
    assert sorted(written) == sorted(original)
    for k, v in original.items():
        if not k.endswith(".pe"):
            np.testing.assert_array_equal(written[k], v, err_msg=k)
    module_o, params_o = load_unet(str(root / "unet"), motion_adapter=path, motion_norm="frame", **HEADS)
    _assert_same(params, params_o)
    # Export of the reloaded params equals the first export, tensor for tensor, in both layouts.
    for layout in ("diffusers", "original"):
        first, second = motion_to_torch(params, layout=layout, max_seq_length=8), motion_to_torch(
            params_o, layout=layout, max_seq_length=8)
        assert sorted(first) == sorted(second)
        for k in first:
            np.testing.assert_array_equal(first[k], second[k], err_msg=k)
    # humandiff's GroupNorm mode travels with the adapter folder (diffusers ignores the private key).
    frame_folder = save_motion_adapter(str(tmp_path / "adapter_frame"), module_o, params_o)
    assert json.load(open(f"{frame_folder}/config.json", encoding="utf-8"))["_humandiff_motion_norm"] == "frame"
    assert read_motion_adapter(frame_folder)[0]["motion_norm"] == "frame"
