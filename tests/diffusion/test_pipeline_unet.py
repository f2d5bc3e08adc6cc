"""The pipeline on the real (tiny) `UNet2DConditionModel` + `PoseEncoder`: cached two-stage == joint recompute."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from humandiff.models import unet as unet_mod

from humandiff.diffusion import pipeline, samplers  # noqa: E402
from humandiff.models.scd import Models  # noqa: E402
from humandiff.diffusion.schedules import ScheduleConfig  # noqa: E402
from humandiff.models.init import numpy_init  # noqa: E402
from humandiff.models.pose_encoder import PoseEncoder  # noqa: E402

SIZE = 8


def _models():
    # Pixel space (no VAE, no image encoder), as the demo: in/out channels 3, pose encoder at full resolution.
    unet = unet_mod.UNet2DConditionModel(
        in_channels=3, out_channels=3, block_out_channels=(16,), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=8)  # one level: compile time matters here
    pose = PoseEncoder(out_channels=16, block_out_channels=(8,))
    params = {
        "unet": numpy_init(unet, jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1,)), jnp.zeros((1, 1, 8)), seed=0),
        "pose_encoder": numpy_init(pose, jnp.zeros((1, SIZE, SIZE, 3)), seed=1),
    }
    return Models(unet=unet, pose_encoder=pose), params


def _inputs():
    rng = np.random.default_rng(0)
    return {
        "ref_image": jnp.asarray(rng.uniform(-1, 1, (2, SIZE, SIZE, 3)), jnp.float32),
        "ref_pose": jnp.asarray(rng.uniform(0, 1, (2, SIZE, SIZE, 3)), jnp.float32),
        "poses": jnp.asarray(rng.uniform(0, 1, (2, 2, SIZE, SIZE, 3)), jnp.float32),
    }


SAMPLER = samplers.make_sampler(ScheduleConfig(zero_terminal_snr=True, prediction_type="v_prediction"), "dpm++", 3)


def _sample(models, params, cfg):
    return np.asarray(pipeline.make_generator(models, cfg)(params, SAMPLER, _inputs(), jax.random.key(0), 3.0))


def test_real_unet_cached_equals_joint():
    models, params = _models()
    cached = _sample(models, params, pipeline.SamplingConfig())
    joint = _sample(models, params, pipeline.SamplingConfig(mode="joint"))
    err = np.abs(cached - joint).max()
    print(f"real UNet: cached vs joint max|d| = {err:.3g}")
    assert cached.shape == (2, 2, SIZE, SIZE, 3) and err <= 1e-4


def test_joint_mode_refuses_motion_modules_over_frames():
    unet = unet_mod.UNet2DConditionModel(
        in_channels=3, out_channels=3, block_out_channels=(16,), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=8,
        attention_head_dim=2, norm_num_groups=8, motion_modules=True, motion_num_attention_heads=2,
        motion_max_seq_length=4)
    models, params = _models()
    models = Models(unet=unet, pose_encoder=models.pose_encoder)
    with pytest.raises(ValueError, match="use mode='cached'"):
        _sample(models, params, pipeline.SamplingConfig(mode="joint"))  # raised while tracing, before any compile
