"""What the training loss computes, pinned against an independently written computation.

`step.loss_given` (what `compute_loss`, and so every train step, runs) is compared with a float64 NumPy rendering
of the SCD objective written here from the method's definition: the schedule from the beta formula, the forward
process, the v-target, min-SNR weights and the try-on mask in NumPy, and the model as direct `unet.apply` calls in
the SCD modes (write -> read, or one joint pass) with the reference hidden from dropped entries and their image
embedding zeroed. The model is the real tiny UNet that `modeling.build` makes from `configs/tiny_test.py`, with
random (non-zero) weights everywhere, the pose encoder's output included.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from humandiff import config_lib
from humandiff.models import scd
from humandiff.models.clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection
from humandiff.models.init import numpy_init
from humandiff.models.vae import AutoencoderKL
from humandiff.training import modeling, step

B, F, S = 2, 2, 16


def _config(**overrides):
    c = config_lib.load("configs/tiny_test.py")
    for key, value in overrides.items():
        config_lib.set_dotted(c, key, value)
    return c


def _params(models, config, seed=0):
    x = modeling.dummy_inputs(models, config)
    params = {"unet": numpy_init(models.unet, x["latent"], jnp.zeros((1,)), x["context"], seed=seed),
              "pose_encoder": numpy_init(models.pose_encoder, x["pose"], seed=seed + 1)}
    if models.vae is not None:
        params["vae"] = numpy_init(models.vae, x["image"], seed=seed + 2, method=models.vae.encode)
    if models.image_encoder is not None:
        size = models.image_encoder.config.image_size
        params["image_encoder"] = numpy_init(models.image_encoder, jnp.zeros((1, size, size, 3)), seed=seed + 3)
    if config.model.reference_net == "separate":  # its own weights (not the UNet's), so reading them shows
        params["reference_unet"] = numpy_init(models.unet, x["latent"], jnp.zeros((1,)), x["context"], seed=seed + 4)
    return params


def _batch(frames=1, seed=0, clip_size=0):
    rng = np.random.default_rng(seed)
    tgt = (B, frames, S, S, 3) if frames > 1 else (B, S, S, 3)
    batch = {"ref_image": rng.uniform(-1, 1, (B, S, S, 3)), "tgt_image": rng.uniform(-1, 1, tgt),
             "ref_pose": rng.uniform(0, 1, (B, S, S, 3)), "tgt_pose": rng.uniform(0, 1, tgt),
             "drop_cond": np.array([True, False])}
    mask = np.zeros((B, S, S, 1))
    mask[:, 3:13, 5:11] = 1.0
    batch["tryon_mask"] = mask
    if clip_size:
        batch["clip_image"] = rng.standard_normal((B, clip_size, clip_size, 3))
    return {k: jnp.asarray(v, jnp.bool_ if v.dtype == bool else jnp.float32) for k, v in batch.items()}


def _draws(config, latent_shape, seed=1):
    rng = np.random.default_rng(seed)
    return {"vae_ref": None, "vae_tgt": None, "t": jnp.asarray([913, 187], jnp.int32),
            "noise": jnp.asarray(rng.standard_normal(latent_shape), jnp.float32),
            "ref_noise": jnp.asarray(rng.standard_normal((B,) + latent_shape[-3:]), jnp.float32)}


def _alphas_cumprod(d) -> np.ndarray:
    """float64 alphas_cumprod from the beta formula (scaled_linear), rescaled to zero terminal SNR."""
    betas = np.linspace(np.sqrt(d.beta_start), np.sqrt(d.beta_end), d.num_train_timesteps) ** 2
    root = np.sqrt(np.cumprod(1.0 - betas))
    if d.zero_snr:
        root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    return root ** 2


def _expected_loss(models, config, params, batch, draws) -> float:
    """The SCD objective written out: float64 NumPy around direct `unet.apply` calls in the SCD modes."""
    d = config.diffusion
    acp = _alphas_cumprod(d)
    unet, p = models.unet, params["unet"]
    p_ref = params.get("reference_unet", p)  # model.reference_net="separate": the reference pass's own UNet
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    video = batch["tgt_image"].ndim == 5
    frames = batch["tgt_image"].shape[1] if video else 1
    flat = lambda x: x.reshape((-1,) + x.shape[-3:])  # noqa: E731
    keep = ~np.asarray(batch["drop_cond"])

    def latents(images):
        if models.vae is None:
            return f64(images)
        mean, _ = models.vae.apply({"params": params["vae"]}, images, method=models.vae.encode)
        return f64(mean) * models.vae.scaling_factor

    z0, z_ref = latents(flat(batch["tgt_image"])), latents(batch["ref_image"])
    t = np.repeat(np.asarray(draws["t"]), frames)
    a, s = np.sqrt(acp[t])[:, None, None, None], np.sqrt(1 - acp[t])[:, None, None, None]
    noise = flat(f64(draws["noise"]))
    z_t = a * z0 + s * noise
    mask = np.ones_like(z0[..., :1])
    if config.task == "tryon":
        mask = f64(batch["tryon_mask"]).reshape(B, z0.shape[1], S // z0.shape[1], z0.shape[2], S // z0.shape[2],
                                                1).max(axis=(2, 4))
        z_t = mask * z_t + (1 - mask) * z0
    t_ref = np.full((B,), d.ref_timestep)
    if d.ref_timestep:
        z_ref = np.sqrt(acp[t_ref[0]]) * z_ref + np.sqrt(1 - acp[t_ref[0]]) * f64(draws["ref_noise"])
    if models.image_encoder is None:
        ctx = np.zeros((B, 1, unet.cross_attention_dim))
    else:
        emb = models.image_encoder.apply({"params": params["image_encoder"]}, batch["clip_image"]).image_embeds
        ctx = f64(emb)[:, None] * keep[:, None, None]
    pose = lambda x: models.pose_encoder.apply({"params": params["pose_encoder"]}, x)  # noqa: E731
    tgt_feats = pose(flat(batch["tgt_pose"]))
    ref_feats = pose(batch["ref_pose"]) if config.model.use_ref_pose else jnp.zeros_like(tgt_feats[:B])
    j = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    if config.train.form == "two_pass" or "reference_unet" in params:  # the two forms agree (tests/models/test_scd)
        _, cache = unet.apply({"params": p_ref}, j(z_ref), j(t_ref), j(ctx), pose_features=ref_feats, scd_mode="write",
                              mutable=["ref_kv"])
        out = unet.apply({"params": p, "ref_kv": cache["ref_kv"]}, j(z_t), j(t), j(np.repeat(ctx, frames, 0)),
                         pose_features=tgt_feats, scd_mode="read", ref_keep=jnp.asarray(np.repeat(keep, frames)),
                         num_frames=frames)
    else:
        out = unet.apply({"params": p}, j(np.concatenate([z_ref, z_t])), j(np.concatenate([t_ref, t])),
                         j(np.concatenate([ctx, ctx])), pose_features=jnp.concatenate([ref_feats, tgt_feats]),
                         scd_mode="joint", ref_keep=jnp.asarray(keep))[B:]
    target = a * noise - s * z0  # v-prediction
    weight = np.ones_like(t, np.float64)
    if d.snr_gamma:
        snr = acp[t] / (1 - acp[t])
        weight = np.minimum(snr, d.snr_gamma) / (snr + 1)
    sq = (f64(out) - target) ** 2 * mask
    return float((weight[:, None, None, None] * sq).sum() / np.broadcast_to(mask, sq.shape).sum())


def _latent_models(config):
    config.model.pose_encoder.block_out_channels = (8, 16)  # one stride-2 stage for the VAE's 2x
    vae = AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=3, norm_num_groups=4,
                        scaling_factor=0.5)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, projection_dim=16,
                                                          num_hidden_layers=1, num_attention_heads=2, image_size=32,
                                                          patch_size=16))
    return modeling.build(config, vae=vae, image_encoder=clip)[0]


CASES = {
    "image_two_pass": ({}, 1),
    "image_two_pass_separate_reference_unet": ({"model.reference_net": "separate"}, 1),
    "image_joint_separate_reference_unet": ({"model.reference_net": "separate", "train.form": "joint"}, 1),
    "image_joint_ref_timestep_min_snr": ({"train.form": "joint", "diffusion.ref_timestep": 250,
                                          "diffusion.snr_gamma": 5.0}, 1),
    "video_two_pass": ({"task": "video", "data.num_frames": F, "model.unet_extra": ml_collections.ConfigDict(
                            {"motion_modules": True, "motion_max_seq_length": 4})}, F),
    "tryon": ({"task": "tryon"}, 1),
    "no_ref_pose_ref_timestep": ({"model.use_ref_pose": False, "diffusion.ref_timestep": 600}, 1),
    "latent_vae_clip": ({}, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_loss_equals_the_scd_objective_written_out(case):
    overrides, frames = CASES[case]
    config = _config(**overrides)
    if case.startswith("latent"):
        models = _latent_models(config)
    else:
        models = modeling.build(config)[0]
    params = _params(models, config)
    batch = _batch(frames, clip_size=32 if models.image_encoder is not None else 0)
    hw = S // models.downscale
    shape = (B, frames, hw, hw, 3) if frames > 1 else (B, hw, hw, 3)
    draws = _draws(config, shape)
    got, _ = jax.jit(lambda p, b, dr: step.loss_given(models, config, step.make_schedule(config), p, b, dr))(
        params, batch, draws)
    want = _expected_loss(models, config, params, batch, draws)
    print(f"{case}: loss {float(got):.6f}, written out {want:.6f}, rel {abs(float(got) - want) / want:.2e}")
    # Measured: at most 7e-7 relative (float32 model and tables against float64 around the same model calls).
    assert float(got) == pytest.approx(want, rel=2e-6)


def test_dropped_entries_do_not_see_the_reference():
    """`drop_cond` hides the reference (its K/V) from that entry: changing a dropped entry's reference changes
    nothing, changing a kept entry's reference changes its prediction (both forms)."""
    for form in ("two_pass", "joint"):
        config = _config(**{"train.form": form})
        models = modeling.build(config)[0]
        params = _params(models, config)
        batch = _batch()
        draws = _draws(config, (B, S, S, 3))

        def predict(b):
            z_ref = models.encode(params, b["ref_image"])
            z_t = models.encode(params, b["tgt_image"])
            ctx = models.embed(params, None, B)
            return step.predict_target(models, config, params, b, z_ref, z_t, draws["t"], ctx,
                                       ~b["drop_cond"])

        base = np.asarray(predict(batch))
        other = dict(batch, ref_image=-batch["ref_image"])
        moved = np.asarray(predict(other))
        assert np.array_equal(moved[0], base[0]), form  # entry 0 is dropped
        assert np.abs(moved[1] - base[1]).max() > 1e-3, form


def test_vae_latents_are_posterior_samples_in_training_and_means_otherwise():
    config = _config()
    models = _latent_models(config)
    params = _params(models, config)
    images = _batch()["ref_image"]
    mean = np.asarray(models.encode(params, images))
    mu, _ = models.vae.apply({"params": params["vae"]}, images, method=models.vae.encode)
    np.testing.assert_allclose(mean, np.asarray(mu) * 0.5, rtol=1e-6, atol=1e-6)
    a = np.asarray(models.encode(params, images, jax.random.key(0)))
    b = np.asarray(models.encode(params, images, jax.random.key(1)))
    assert np.abs(a - b).max() > 1e-3 and np.abs(a - mean).max() > 1e-3


def test_models_bundle_is_hashed_by_identity():
    config = _config()
    models = modeling.build(config)[0]
    twin = dataclasses.replace(models)
    assert models == models and models != twin and hash(models) != hash(twin)


def _loss(config, params=None, batch=None, models=None):
    models = models or modeling.build(config)[0]
    params = params if params is not None else _params(models, config)
    batch = batch if batch is not None else _batch()
    fn = jax.jit(lambda p, b: step.compute_loss(models, config, step.make_schedule(config), p, b,
                                                jax.random.key(3))[0])
    return float(fn(params, batch)), models, params


def test_interaction_full_trains_full_attention():
    """`interaction=full` is what the train step computes: another loss than causal on the same seed and batch;
    the reference half of the trained model's joint pass sees the target under full, and is bit-identical under
    causal when only the target changes. Full with the two-pass form is refused at start-up."""
    with pytest.raises(config_lib.ConfigError, match=r"train\.form.*model\.interaction='full'"):
        config_lib.validate(_config(**{"model.interaction": "full"}))
    demo = config_lib.load("configs/demo.py:interaction=full")
    assert (demo.model.interaction, demo.train.form) == ("full", "joint")
    with pytest.raises(config_lib.ConfigError, match="train.form"):
        config_lib.validate(config_lib.load("configs/demo.py:interaction=full,form=two_pass"))
    losses, runs = {}, {}
    for interaction in ("causal", "full"):
        config = _config(**{"model.interaction": interaction, "train.form": "joint"})
        config_lib.validate(config)
        losses[interaction], models, params = _loss(config)
        assert models.unet.interaction == interaction
        batch = _batch()
        z = models.encode(params, batch["tgt_image"])
        run = jax.jit(lambda zt, models=models: scd.joint_pass(
            models.unet, params["unet"], models.encode(params, batch["ref_image"]), zt, jnp.full((B,), 500.0),
            models.embed(params, None, B))[0])
        runs[interaction] = np.asarray(run(z)), np.asarray(run(z + 1.0))
    assert abs(losses["full"] - losses["causal"]) > 1e-4 * losses["causal"], losses
    assert np.array_equal(*runs["causal"])
    assert np.abs(runs["full"][0] - runs["full"][1]).max() > 1e-3


@pytest.mark.parametrize("key,value", [
    ("model.use_ref_pose", False),
    ("diffusion.ref_timestep", 400),
    ("diffusion.snr_gamma", 5.0),
    ("diffusion.noise_offset", 0.0),
    ("task", "tryon"),
])
def test_each_switch_changes_the_loss(key, value):
    """Same parameters, batch and seed: flipping one switch changes the train step's loss (what it changes to is
    pinned by `test_training_loss_equals_the_scd_objective_written_out`)."""
    base, models, params = _loss(_config())
    flipped, _, _ = _loss(_config(**{key: value}), params=params, models=models)
    assert abs(flipped - base) > 1e-5 * base, (key, base, flipped)


def test_condition_dropout_changes_the_loss():
    config = _config()
    base, models, params = _loss(config)
    batch = dict(_batch(), drop_cond=jnp.asarray([False, False]))
    assert abs(_loss(config, params, batch, models)[0] - base) > 1e-5 * base


def test_pose_injection_point_follows_the_config():
    for where, channels in (("conv_in", 16), ("input", 3)):
        models = modeling.build(_config(**{"model.pose_injection": where}))[0]
        assert models.unet.pose_injection == where and models.pose_encoder.out_channels == channels


def test_training_forms_are_two_programs_with_one_value():
    """`train.form` changes the program (a cached two-pass vs one joint pass), not the value under causal."""
    two, models, params = _loss(_config())
    joint, _, _ = _loss(_config(**{"train.form": "joint"}), params=params, models=models)
    assert joint == pytest.approx(two, rel=2e-6)
    texts = {form: jax.jit(lambda p, b, c=_config(**{"train.form": form}): step.compute_loss(
        models, c, step.make_schedule(c), p, b, jax.random.key(3))[0]).lower(params, _batch()).as_text()
        for form in ("two_pass", "joint")}
    assert texts["two_pass"] != texts["joint"]


def test_separate_reference_unet_is_what_the_step_trains():
    """`model.reference_net="separate"`: the reference pass reads `reference_unet` (a copy of the UNet gives the
    shared model's loss; other weights another loss), its gradient reaches the reference UNet's self-attention
    K/V (through the cache) and not its output layer, and config and parameters must agree."""
    shared_config, separate_config = _config(), _config(**{"model.reference_net": "separate"})
    models = modeling.build(shared_config)[0]
    params = _params(models, shared_config)
    base, _, _ = _loss(shared_config, params=params, models=models)
    copy, _, _ = _loss(separate_config, params=dict(params, reference_unet=params["unet"]), models=models)
    assert copy == pytest.approx(base, rel=1e-6)
    own = _params(models, separate_config)
    other, _, _ = _loss(separate_config, params=own, models=models)
    assert abs(other - base) > 1e-4 * base, (base, other)
    grads = jax.jit(jax.grad(lambda p: step.compute_loss(models, separate_config, step.make_schedule(separate_config),
                                                         p, _batch(), jax.random.key(3))[0]))(own)
    attn = lambda tree: tree["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]  # noqa: E731
    assert float(jnp.abs(attn(grads["reference_unet"])["to_k"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["reference_unet"]["conv_out"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(grads["unet"]["conv_out"]["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="reference_net='separate' but the parameters lack a reference_unet"):
        _loss(separate_config, params=params, models=models)
    with pytest.raises(ValueError, match="reference_net='shared' but the parameters have a reference_unet"):
        _loss(shared_config, params=own, models=models)
