"""Long-video sampling with motion modules: 40 frames through windows of 16 with overlap 4 (tiny pixel-space UNet)."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from humandiff.diffusion import pipeline
from humandiff.models.scd import Models

from humandiff.diffusion import samplers  # noqa: E402
from humandiff.diffusion.schedules import ScheduleConfig  # noqa: E402
from humandiff.models.init import numpy_init  # noqa: E402
from humandiff.models.pose_encoder import PoseEncoder  # noqa: E402
from humandiff.models.unet import UNet2DConditionModel  # noqa: E402
from humandiff.weights import io  # noqa: E402

SIZE, FRAMES, WINDOW, OVERLAP = 8, 40, 16, 4


def test_40_frames_through_overlapping_windows_with_motion_modules():
    unet = UNet2DConditionModel(in_channels=3, out_channels=3, block_out_channels=(16,), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                                cross_attention_dim=8, attention_head_dim=2, norm_num_groups=8, motion_modules=True,
                                motion_num_attention_heads=2, motion_max_seq_length=WINDOW)
    pose = PoseEncoder(out_channels=16, block_out_channels=(8,))
    params = {"unet": numpy_init(unet, jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1,)), jnp.zeros((1, 1, 8))),
              "pose_encoder": numpy_init(pose, jnp.zeros((1, SIZE, SIZE, 3)), seed=1)}
    # Motion modules with zero proj_out (as freshly initialised): the same program, different parameters.
    flat = io.flatten(params["unet"])
    still = {"unet": io.unflatten({k: jnp.zeros_like(v) if "/motion_modules_" in k and "/proj_out/" in k else v
                                   for k, v in flat.items()}), "pose_encoder": params["pose_encoder"]}
    rng = np.random.default_rng(0)
    inputs = {"ref_image": jnp.asarray(rng.uniform(-1, 1, (1, SIZE, SIZE, 3)), jnp.float32),
              "ref_pose": jnp.asarray(rng.uniform(0, 1, (1, SIZE, SIZE, 3)), jnp.float32),
              "poses": jnp.asarray(rng.uniform(0, 1, (1, FRAMES, SIZE, SIZE, 3)), jnp.float32)}
    cfg = pipeline.SamplingConfig(window=WINDOW, overlap=OVERLAP, fusion="tent")
    assert pipeline.window_starts(FRAMES, WINDOW, OVERLAP) == [0, 12, 24]  # three windows cover 40 frames
    sampler = samplers.make_sampler(ScheduleConfig(zero_terminal_snr=True, prediction_type="v_prediction"), "ddim", 2)
    generate = pipeline.make_generator(Models(unet=unet, pose_encoder=pose), cfg)
    video = np.asarray(generate(params, sampler, inputs, jax.random.key(0), 3.0))
    assert video.shape == (1, FRAMES, SIZE, SIZE, 3) and np.isfinite(video).all()
    plain = np.asarray(generate(still, sampler, inputs, jax.random.key(0), 3.0))
    diff = np.abs(video - plain).max(axis=(0, 2, 3, 4))
    print(f"40 frames, window {WINDOW}/overlap {OVERLAP}: max|motion - no motion| per frame "
          f"min {diff.min():.3g} max {diff.max():.3g}")
    assert (diff > 0).all()  # the motion modules act in every frame of every window
