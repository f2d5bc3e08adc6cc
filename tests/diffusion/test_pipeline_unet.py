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


SAMPLER = samplers.make_sampler(ScheduleConfig(zero_terminal_snr=True, prediction_type="v_prediction"), "dpmsolver++", 3)


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


def test_guidance_on_the_real_unet_is_the_cfg_combination_of_two_direct_calls():
    """One guided prediction equals `uncond + g (cond - uncond)` from direct UNet calls: the conditional branch reads
    the reference K/V, the unconditional one does not (zero image embedding: no encoder here)."""
    models, params = _models()
    inputs, cfg, g = _inputs(), pipeline.SamplingConfig(), 3.0
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 2, SIZE, SIZE, 3)), jnp.float32)

    @jax.jit
    def got(p, x, g):
        cond = pipeline.prepare_condition(models, cfg, p, inputs)
        return pipeline.window_prediction(models, p, cfg, cond, x, jnp.float32(600.0), 0, g)

    @jax.jit
    def by_hand(p, x):
        unet, pose = models.unet, lambda a: models.pose_encoder.apply({"params": p["pose_encoder"]}, a)
        ctx = jnp.zeros((2, 1, 8))
        _, cache = unet.apply({"params": p["unet"]}, inputs["ref_image"], jnp.zeros((2,)), ctx,
                              pose_features=pose(inputs["ref_pose"]), scd_mode="write", mutable=["ref_kv"])
        call = lambda keep: unet.apply(  # noqa: E731
            {"params": p["unet"], "ref_kv": cache["ref_kv"]}, x.reshape(4, SIZE, SIZE, 3), jnp.full((4,), 600.0),
            jnp.zeros((4, 1, 8)), pose_features=pose(inputs["poses"].reshape(4, SIZE, SIZE, 3)), scd_mode="read",
            ref_keep=jnp.full((4,), keep), num_frames=2).reshape(x.shape)
        return call(False), call(True)

    uncond, cond = by_hand(params, x)
    want = uncond + g * (cond - uncond)
    out = got(params, x, jnp.float32(g))
    err = float(jnp.abs(out - want).max() / jnp.abs(want).max())
    print(f"guided prediction vs direct calls: rel {err:.2e}")
    assert err <= 1e-5  # measured ~1e-7 (same calls, another batch layout)
    assert float(jnp.abs(got(params, x, jnp.float32(1.0)) - cond).max()) <= 1e-5 * float(jnp.abs(cond).max())


def test_ref_timestep_on_the_real_unet_cached_equals_joint_and_changes_the_sample():
    models, params = _models()
    at = {t: pipeline.SamplingConfig(ref_timestep=t) for t in (0, 250)}
    cached = _sample(models, params, at[250])
    joint = _sample(models, params, pipeline.SamplingConfig(ref_timestep=250, mode="joint"))
    err = np.abs(cached - joint).max()
    print(f"real UNet, ref_timestep=250: cached vs joint max|d| = {err:.3g}")
    assert err <= 1e-4
    assert np.abs(cached - _sample(models, params, at[0])).max() > 1e-3


def test_tryon_on_the_real_unet_keeps_the_pixels_outside_the_mask():
    models, params = _models()
    rng = np.random.default_rng(3)
    inputs = dict(_inputs(), poses=_inputs()["poses"][:, :1])
    person = jnp.asarray(rng.uniform(-1, 1, (2, SIZE, SIZE, 3)), jnp.float32)
    mask = np.zeros((2, SIZE, SIZE, 1), np.float32)
    mask[:, 2:6, 1:7] = 1
    inputs.update(tryon_person=person, tryon_mask=jnp.asarray(mask))
    out = np.asarray(pipeline.make_generator(models, pipeline.SamplingConfig())(params, SAMPLER, inputs,
                                                                                jax.random.key(0), 3.0))[:, 0]
    outside = np.broadcast_to(mask == 0, out.shape)
    np.testing.assert_array_equal(out[outside], np.clip(np.asarray(person), -1, 1)[outside])
    assert np.abs(out - np.asarray(person))[~outside].max() > 1e-2  # the garment region is generated


def test_windows_on_the_real_unet_fuse_to_the_whole_video():
    """Without temporal layers every frame is predicted alone, so overlapping windows fuse to the one-window
    prediction (one denoising step, 5 frames, windows of 2 overlapping by 1, tent weights)."""
    models, params = _models()
    rng = np.random.default_rng(4)
    inputs = dict(_inputs(), poses=jnp.asarray(rng.uniform(0, 1, (2, 5, SIZE, SIZE, 3)), jnp.float32))
    x = jnp.asarray(rng.standard_normal((2, 5, SIZE, SIZE, 3)), jnp.float32)

    def predict(cfg):
        def f(p, i, x):
            cond = pipeline.prepare_condition(models, cfg, p, i)
            return pipeline.video_prediction(models, p, cfg, cond, x, jnp.float32(600.0), jnp.float32(3.0))
        return np.asarray(jax.jit(f)(params, inputs, x))

    whole = predict(pipeline.SamplingConfig(window=5, overlap=0))
    fused = predict(pipeline.SamplingConfig(window=2, overlap=1, fusion="tent"))
    assert pipeline.window_starts(5, 2, 1) == [0, 1, 2, 3]
    assert np.abs(fused - whole).max() <= 1e-5 * np.abs(whole).max()
