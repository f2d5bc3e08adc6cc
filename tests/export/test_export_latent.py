"""Export of a latent-space model trained with a VAE and a CLIP image encoder (both frozen, loaded from local
folders as the trainer does): `vae/` and `image_encoder/` come out with the weights the model was trained with,
load in diffusers / transformers with no missing keys, and the PyTorch pipeline samples the same frames as the
JAX pipeline (VAE encode/decode and the CLIP image embedding included)."""

import os

import numpy as np
import pytest

from .conftest import psnr, read_json, require_parts, tiny_config, write_checkpoint

require_parts()
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
import humandiff.checkpoints.loading  # noqa: F401  (fails loudly if broken)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from humandiff import torch_scd  # noqa: E402
from humandiff.checkpoints import export
from humandiff.weights import io  # noqa: E402

STEPS, GUIDANCE = 3, 2.5


@pytest.fixture(scope="module")
def latent_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(root / "vae_src")
    clip = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16))
    clip.save_pretrained(root / "clip_src")
    config = tiny_config()
    config.model.vae_dir, config.model.image_encoder_dir = str(root / "vae_src"), str(root / "clip_src")
    config.model.unet.in_channels = config.model.unet.out_channels = 4
    config.model.pose_encoder.block_out_channels = (16, 16)  # 2x down: the tiny VAE's factor
    config.data.clip_size = 32
    config.optim.frozen = ("^vae/", "^image_encoder/")
    models, params, _ = write_checkpoint(root / "run", config)
    out = root / "export"
    written = export.write_export(export.read_checkpoint(str(root / "run")), str(out))
    return root, out, written, params


def test_vae_and_image_encoder_are_exported_as_trained(latent_export):
    root, out, written, _ = latent_export
    assert written == ["unet", "scheduler", "pose_encoder", "vae", "image_encoder"]
    index = read_json(out / "model_index.json")
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    vae, info = diffusers.AutoencoderKL.from_pretrained(out / "vae", output_loading_info=True)
    assert not any(info.values()), info
    clip, info = transformers.CLIPVisionModelWithProjection.from_pretrained(out / "image_encoder",
                                                                             output_loading_info=True)
    assert not any(info.values()), info
    for got, src in ((vae.state_dict(), io.read_state_dict(str(root / "vae_src"))),
                     (clip.state_dict(), io.read_state_dict(str(root / "clip_src")))):
        shared = set(got) & set(src)
        assert len(shared) >= len(src) - 1  # CLIP's position_ids buffer may or may not be saved
        for key in shared:
            np.testing.assert_array_equal(got[key].numpy(), src[key], err_msg=key)


@pytest.mark.slow  # one more sampler compile (~35 s on a busy 2-core CPU)
def test_torch_sampling_with_vae_and_clip_matches_jax(latent_export):
    from humandiff.checkpoints import loading  # noqa: PLC0415
    from humandiff.diffusion import pipeline, samplers  # noqa: PLC0415

    _, out, _, _ = latent_export
    rng = np.random.default_rng(0)
    inputs = {"ref_image": rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32),
              "ref_pose": rng.uniform(0, 1, (1, 16, 16, 3)).astype(np.float32),
              "poses": rng.uniform(0, 1, (1, 2, 16, 16, 3)).astype(np.float32),
              "clip_image": rng.standard_normal((1, 32, 32, 3)).astype(np.float32)}
    loaded = loading.load_checkpoint(str(out))
    sampler = samplers.make_sampler(loaded.schedule, "ddim", STEPS, spacing=loaded.spacing,
                                    steps_offset=loaded.steps_offset)
    key = jax.random.key(3)
    frames = pipeline.make_generator(loaded.models, pipeline.SamplingConfig())(
        loaded.params, sampler, {k: jnp.asarray(v) for k, v in inputs.items()}, key, GUIDANCE)
    noise = np.asarray(jax.random.normal(jax.random.split(key)[0], (1, 2, 8, 8, 4), jnp.float32))
    pipe = torch_scd.load_pipeline(str(out))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))  # noqa: E731
    got = torch_scd.animate(pipe, t(inputs["ref_image"]), t(inputs["poses"]), ref_pose=t(inputs["ref_pose"]),
                            clip_image=t(inputs["clip_image"]), num_steps=STEPS, guidance=GUIDANCE, noise=t(noise))
    got = np.moveaxis(got.numpy(), -3, -1)
    err = float(np.max(np.abs(got - np.asarray(frames))))
    print(f"VAE + CLIP model, {STEPS}-step DDIM, torch vs JAX: PSNR {psnr(got, frames):.1f} dB, max |delta| {err:.2e}")
    assert err <= 1e-4  # measured at 133 dB PSNR (float32 summation order)
