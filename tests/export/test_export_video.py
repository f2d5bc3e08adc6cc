"""A video (motion-module) model through the whole export path: trainer-format checkpoint -> export (unet/ +
motion_adapter/ + motion_module.safetensors) -> PyTorch sampling over overlapping frame windows, compared with
the JAX pipeline on the same weights and noise (max |delta| <= 1e-4)."""

import os

import numpy as np
import pytest

from .conftest import psnr, read_json, require_parts, tiny_config, write_checkpoint

require_parts()
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
import humandiff.checkpoints.loading  # noqa: F401  (fails loudly if broken)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from humandiff import torch_scd  # noqa: E402
from humandiff.checkpoints import export
from humandiff.weights import load_unet  # noqa: E402

FRAMES, WINDOW, OVERLAP, STEPS, GUIDANCE = 5, 3, 1, 3, 2.0


@pytest.mark.slow  # one video sampler compile (~30-60 s on a busy 2-core CPU)
def test_video_export_samples_like_jax(tmp_path):
    from humandiff.checkpoints import loading  # noqa: PLC0415
    from humandiff.diffusion import pipeline, samplers  # noqa: PLC0415
    from humandiff.models.scd import Models  # noqa: PLC0415

    config = tiny_config()
    config.model.unet_extra = {"motion_modules": True, "motion_num_attention_heads": (2, 4),
                               "motion_max_seq_length": 8}
    write_checkpoint(tmp_path / "run", config)
    out = tmp_path / "export"
    written = export.write_export(export.read_checkpoint(str(tmp_path / "run")), str(out))
    assert written == ["unet", "scheduler", "pose_encoder", "motion_adapter", "motion_module.safetensors"]
    assert read_json(out / "model_index.json")["humandiff"]["motion_modules"] is True

    unet, unet_params = load_unet(str(out / "unet"), motion_adapter=str(out / "motion_adapter"))
    pose, pose_params = loading.load_pose_encoder(str(out / "pose_encoder"))
    models = Models(unet=unet, pose_encoder=pose)
    schedule = loading.load_checkpoint(str(out)).schedule
    sampler = samplers.make_sampler(schedule, "ddim", STEPS, spacing="trailing")
    rng = np.random.default_rng(0)
    inputs = {"ref_image": rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32),
              "poses": rng.uniform(0, 1, (1, FRAMES, 16, 16, 3)).astype(np.float32)}
    key = jax.random.key(5)
    cfg = pipeline.SamplingConfig(window=WINDOW, overlap=OVERLAP, use_ref_pose=False)
    frames = pipeline.make_generator(models, cfg)({"unet": unet_params, "pose_encoder": pose_params}, sampler,
                                                  {k: jnp.asarray(v) for k, v in inputs.items()}, key, GUIDANCE)
    noise = np.asarray(jax.random.normal(jax.random.split(key)[0], (1, FRAMES, 16, 16, 3), jnp.float32))

    pipe = torch_scd.load_pipeline(str(out))
    assert pipe.video_unet is not None
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, -3)))  # noqa: E731
    got = torch_scd.animate(pipe, t(inputs["ref_image"]), t(inputs["poses"]), num_steps=STEPS, guidance=GUIDANCE,
                            noise=t(noise), window=WINDOW, overlap=OVERLAP, use_ref_pose=False)
    got = np.moveaxis(got.numpy(), -3, -1)
    err = float(np.max(np.abs(got - np.asarray(frames))))
    print(f"video model ({FRAMES} frames, windows of {WINDOW} / overlap {OVERLAP}), {STEPS}-step DDIM, torch vs JAX: "
          f"PSNR {psnr(got, frames):.1f} dB, max |delta| {err:.2e}")
    assert err <= 1e-4  # measured at 124 dB PSNR (float32 summation order)
    assert os.path.isfile(out / "motion_module.safetensors")
