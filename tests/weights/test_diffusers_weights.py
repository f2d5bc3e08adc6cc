"""Weight maps and loaders: SD-1.5 parameter count, torch <-> Flax round trips, export into diffusers, ControlNet
pose-encoder init, and clear errors for bad input."""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from humandiff.models.unet import UNet2DConditionModel  # noqa: E402
from humandiff.weights import io, load_unet, load_vae  # noqa: E402
from humandiff.weights.diffusers import save_unet, unet_param_shapes, unet_to_torch  # noqa: E402
from humandiff.weights.pose import load_pose_encoder_from_controlnet, pose_encoder_to_torch  # noqa: E402

TINY = dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=(2, 4),
            norm_num_groups=8, sample_size=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**TINY).eval()
    folder = tmp_path_factory.mktemp("unet")
    model.save_pretrained(folder)
    return model, str(folder)


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_sd15_parameter_count_without_allocating():
    # diffusers' SD-1.5 UNet: default block layout with cross_attention_dim=768.
    shapes = unet_param_shapes(UNet2DConditionModel(cross_attention_dim=768))
    assert sum(int(np.prod(s)) for s in shapes.values()) == 859_520_964


def test_round_trip_bit_identical_and_loads_into_diffusers(tiny):
    model, folder = tiny
    _, params = load_unet(folder)
    exported = unet_to_torch(params)
    original = {k: v.numpy() for k, v in model.state_dict().items()}
    assert sorted(exported) == sorted(original)
    for k, v in original.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    # torch -> flax -> torch -> flax is bit-identical.
    again = io.flatten(_reload(exported))
    for k, v in io.flatten(params).items():
        np.testing.assert_array_equal(np.asarray(again[k]), np.asarray(v), err_msg=k)
    fresh = diffusers.UNet2DConditionModel(**TINY)
    result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def _reload(state):
    from humandiff.weights.diffusers import params_from_state_dict  # pylint: disable=import-outside-toplevel

    module = UNet2DConditionModel.from_config(TINY)
    return params_from_state_dict(state, unet_param_shapes(module), "exported")


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(io.WeightsError, match="config file not found"):
        load_unet(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(io.WeightsError, match="no weight file"):
        load_unet(str(tmp_path))


def test_malformed_config(tiny, tmp_path):
    dst = _copy(tiny[1], tmp_path)
    (dst / "config.json").write_text("{not json")
    with pytest.raises(io.WeightsError, match=r"malformed JSON in .*config.json"):
        load_unet(str(dst))


def _edit_config(dst, **changes):
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))


def test_shape_mismatch_names_the_keys(tiny, tmp_path):
    dst = _copy(tiny[1], tmp_path)
    _edit_config(dst, cross_attention_dim=12)
    with pytest.raises(io.WeightsError, match=r"shape mismatch.*attn2\.to_k\.weight \(\S*attn2/to_k/kernel\): "
                                              r"expected \(12, 16\), got \(8, 16\)"):  # the file's key, then ours
        load_unet(str(dst))


def test_unknown_block_type_and_unsupported_key(tiny, tmp_path):
    dst = _copy(tiny[1], tmp_path)
    _edit_config(dst, down_block_types=["CrossAttnDownBlock2D", "SimpleDownBlock2D"])
    with pytest.raises(ValueError, match=r"config.json: unknown down_block_types\[1\]='SimpleDownBlock2D'"):
        load_unet(str(dst))
    _edit_config(dst, down_block_types=TINY["down_block_types"], class_embed_type="timestep")
    with pytest.raises(ValueError, match=r"unsupported class_embed_type='timestep'"):
        load_unet(str(dst))


def test_pickle_refused_without_opt_in(tiny, tmp_path):
    model, _ = tiny
    folder = tmp_path / "bin"
    model.save_pretrained(folder, safe_serialization=False)
    assert (folder / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(io.WeightsError, match=r"diffusion_pytorch_model.bin is a pickle file"):
        load_unet(str(folder))
    _, params = load_unet(str(folder), allow_pickle=True)
    assert params["conv_in"]["kernel"].shape == (3, 3, 4, 16)


def test_vae_unknown_key_is_named(tmp_path):
    diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2).save_pretrained(tmp_path)
    _edit_config(tmp_path, latents_mean=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"unsupported latents_mean=\[0.1, 0.2\]"):
        load_vae(str(tmp_path))


def test_pose_encoder_from_controlnet_matches_torch_embedding(tmp_path):
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding  # noqa: PLC0415

    torch.manual_seed(0)
    emb = ControlNetConditioningEmbedding(16, 3, (4, 8, 8))
    with torch.no_grad():
        emb.conv_out.weight.normal_(0, 0.1)
    state = {f"controlnet_cond_embedding.{k}": v.contiguous() for k, v in emb.state_dict().items()}
    from safetensors.torch import save_file  # noqa: PLC0415

    os.makedirs(tmp_path / "cn")
    save_file(state, str(tmp_path / "cn" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "cn" / "config.json").write_text(json.dumps({"conditioning_embedding_out_channels": [4, 8, 8]}))
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 8)).astype(np.float32)
    with torch.no_grad():
        ref = emb(torch.from_numpy(x)).numpy()
    module, params = load_pose_encoder_from_controlnet(str(tmp_path / "cn"), out_channels=16, keep_conv_out=True)
    out = np.asarray(jax.jit(module.apply)({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1))))
    err = float(np.abs(out.transpose(0, 3, 1, 2) - ref).max())
    print(f"PoseEncoder vs ControlNetConditioningEmbedding max|d|={err:.3e} max|ref|={np.abs(ref).max():.3e}")
    assert err <= 1e-4 * float(np.abs(ref).max())
    exported = pose_encoder_to_torch(params, "controlnet_cond_embedding.")
    for k, v in state.items():
        np.testing.assert_array_equal(exported[k], v.numpy(), err_msg=k)
    # Default: conv_out stays zero (AnimateAnyone recipe), so the encoder starts as a no-op.
    module, params = load_pose_encoder_from_controlnet(str(tmp_path / "cn"), out_channels=4)
    assert not np.any(np.asarray(module.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)))))
    with pytest.raises(ValueError, match="reads the 3 pose channels.*coord_channels=False"):
        load_pose_encoder_from_controlnet(str(tmp_path / "cn"), out_channels=4, coord_channels=True)


def test_save_unet_reloads_in_diffusers_with_same_outputs(tiny, tmp_path):
    model, folder = tiny
    module, params = load_unet(folder)
    save_unet(str(tmp_path / "out"), module, params)
    again = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path / "out")).eval()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        np.testing.assert_array_equal(again(x, 5, ctx).sample.numpy(), model(x, 5, ctx).sample.numpy())


def test_vae_legacy_attention_names_load(tmp_path):
    """Older VAE checkpoints name the mid-block attention query/key/value/proj_attn; they load the same."""
    from safetensors.torch import save_file  # noqa: PLC0415

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2)
    vae.save_pretrained(tmp_path / "new")
    legacy = {}
    for k, v in vae.state_dict().items():
        renames = ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn."))
        for new, old in renames:
            k = k.replace(new, old)
        legacy[k] = v.contiguous()
    assert any(".proj_attn." in k for k in legacy)
    os.makedirs(tmp_path / "old")
    shutil.copy(tmp_path / "new" / "config.json", tmp_path / "old" / "config.json")
    save_file(legacy, str(tmp_path / "old" / "diffusion_pytorch_model.safetensors"))
    _, new = load_vae(str(tmp_path / "new"))
    _, old = load_vae(str(tmp_path / "old"))
    for k, v in io.flatten(new).items():
        np.testing.assert_array_equal(np.asarray(io.flatten(old)[k]), np.asarray(v), err_msg=k)
