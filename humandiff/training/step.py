"""The SCD train step: a pure function `state, frozen, batch, rng -> state, metrics`.

One step:
1. pose features of the target pose (and of the reference pose when `model.use_ref_pose`);
2. latents: VAE encode of reference and target (pixel space when there is no VAE);
3. context: CLIP image embedding of the reference as one cross-attention token, zeroed where the condition is
   dropped (`batch["drop_cond"]`), or a zero token when there is no image encoder;
4. noise (with offset) and uniform timesteps; try-on noises only inside the garment mask;
5. two-pass form: reference pass at `diffusion.ref_timestep` writing the K/V cache, then the target pass reading
   it (`ref_keep = ~drop_cond` hides the reference from dropped entries); joint form: one pass over
   `[ref ; tgt]` entries with the block-causal (or full) mask. Gradients flow through the reference pass (into
   its own UNet with `model.reference_net="separate"`);
6. loss on the target only (eps or v, min-SNR-gamma, mask for try-on);
7. AdamW update of the trainable tree, EMA; a non-finite loss or gradient leaves params, EMA and optimizer state
   unchanged (`finite=0` in the metrics; the loop stops under `train.nan_policy="stop"`), so a NaN never reaches
   a checkpoint.

The state is a dict pytree `{"step", "params", "ema", "opt_state"}` holding the *trainable* parameters only; the
frozen parameters are a separate argument (never donated, never re-saved).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from humandiff.diffusion import losses, schedules
from humandiff.models import scd
from humandiff.models.scd import Models
from humandiff.training import modeling, optim

State = dict[str, Any]


def make_schedule(config) -> schedules.Schedule:
    """The training noise schedule from `config.diffusion`."""
    d = config.diffusion
    return schedules.Schedule.create(schedules.ScheduleConfig(
        num_train_timesteps=d.num_train_timesteps, beta_start=d.beta_start, beta_end=d.beta_end,
        beta_schedule=d.beta_schedule, zero_terminal_snr=d.zero_snr, prediction_type=d.prediction_type))


def init_state(params: Any, tx: optim.AdamW, ema_decay: float) -> State:
    """Train state for the trainable tree `params` (EMA starts as a float32 copy)."""
    ema = jax.tree.map(lambda p: p.astype(jnp.float32), params) if ema_decay > 0 else {}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "ema": ema, "opt_state": tx.init(params)}


def _flat_frames(x: jax.Array, video: bool) -> jax.Array:
    return x.reshape((-1,) + x.shape[2:]) if video else x


def predict_target(models: Models, config, params: Any, batch: dict, z_ref: jax.Array, z_t: jax.Array,
                   t: jax.Array, context: jax.Array, keep: jax.Array) -> jax.Array:
    """The SCD forward of one batch in the form `train.form` names; returns the target prediction.

    Args:
      models: the module bundle.
      config: training config (`train.form`, `model.use_ref_pose`, `model.reference_net`,
        `diffusion.ref_timestep`).
      params: full parameter tree (trainable + frozen); with `model.reference_net="separate"` it holds the
        reference pass's own UNet under "reference_unet".
      batch: the training batch (poses are read from it).
      z_ref: reference input latents `[B, h, w, C]` (already noised to `ref_timestep` when it is > 0).
      z_t: noisy target latents `[B*F, h, w, C]`.
      t: target timesteps `[B*F]`.
      context: `[B, 1, D]` cross-attention context per reference (zero where the condition is dropped).
      keep: bool `[B]`, False where the reference is dropped.

    Returns:
      `[B*F, h, w, C]` model output for the target entries.
    """
    separate = modeling.reference_net(config) == "separate"
    if separate != ("reference_unet" in params):
        raise ValueError(f"config.model.reference_net={modeling.reference_net(config)!r} but the parameters "
                         f"{'lack' if separate else 'have'} a reference_unet")
    b = z_ref.shape[0]
    frames = z_t.shape[0] // b
    video = batch["tgt_pose"].ndim == 5
    pose_tgt = models.pose(params, _flat_frames(batch["tgt_pose"], video))
    pose_ref = models.pose(params, batch["ref_pose"]) if config.model.use_ref_pose else None
    t_ref = jnp.full((b,), config.diffusion.ref_timestep, jnp.int32)
    if config.train.form == "joint":
        _, out = scd.joint_pass(models.unet, params["unet"], z_ref, z_t, t, context, t_ref=t_ref,
                                ref_pose_features=pose_ref, pose_features=pose_tgt, ref_keep=keep,
                                ref_params=params.get("reference_unet"))
        return out
    rep = lambda x: jnp.repeat(x, frames, axis=0)  # noqa: E731 - per-reference value for each of its frames
    cache = scd.reference_pass(models.unet, scd.reference_params(params), z_ref, context, t_ref=t_ref,
                               pose_features=pose_ref)
    return scd.target_pass(models.unet, params["unet"], cache, z_t, t, rep(context), pose_features=pose_tgt,
                           ref_keep=rep(keep), num_frames=frames)


def _latent_shape(models: Models, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """`[..., H, W, 3]` images -> the shape of their latents `[..., H/downscale, W/downscale, latent_channels]`."""
    *lead, h, w, _ = image_shape
    return (*lead, h // models.downscale, w // models.downscale, models.latent_channels)


def draw(models: Models, config, schedule: schedules.Schedule, batch: dict, rng: jax.Array) -> dict:
    """The random draws of one step: keys `vae_ref` / `vae_tgt` (VAE posterior samples), timesteps `t` `[B]`, the
    target `noise` (with offset) and `ref_noise` (used when `diffusion.ref_timestep > 0`), in latent shapes."""
    k_vae, k_noise, k_t, k_ref = jax.random.split(rng, 4)
    k_vae_ref, k_vae_tgt = jax.random.split(k_vae)
    return {"vae_ref": k_vae_ref, "vae_tgt": k_vae_tgt,
            "t": schedules.sample_timesteps(k_t, batch["ref_image"].shape[0], schedule),
            "noise": schedules.sample_noise(k_noise, _latent_shape(models, batch["tgt_image"].shape),
                                            config.diffusion.noise_offset),
            "ref_noise": jax.random.normal(k_ref, _latent_shape(models, batch["ref_image"].shape))}


def loss_given(models: Models, config, schedule: schedules.Schedule, params: Any, batch: dict,
               draws: dict) -> tuple[jax.Array, dict]:
    """Scalar training loss (target only) and auxiliary metrics for one batch and fixed random draws (`draw`;
    `vae_ref` / `vae_tgt` may be None for the VAE posterior mean)."""
    keep = ~batch["drop_cond"].astype(bool)
    video = batch["tgt_image"].ndim == 5
    b = batch["ref_image"].shape[0]
    frames = batch["tgt_image"].shape[1] if video else 1
    z_ref = models.encode(params, batch["ref_image"], draws["vae_ref"])
    z0 = models.encode(params, _flat_frames(batch["tgt_image"], video), draws["vae_tgt"])
    z0 = z0.reshape((b, frames) + z0.shape[1:]) if video else z0
    noise, t = draws["noise"], draws["t"]
    mask = None
    if config.task == "tryon":
        mask = schedules.latent_mask(batch["tryon_mask"], z0.shape[1:3])  # images only (config_lib.validate)
        z_t = schedules.q_sample_masked(schedule, z0, noise, t, mask)
    else:
        z_t = schedules.q_sample(schedule, z0, noise, t)
    if config.diffusion.ref_timestep > 0:
        t_ref = jnp.full((b,), config.diffusion.ref_timestep, jnp.int32)
        z_ref = schedules.q_sample(schedule, z_ref, draws["ref_noise"], t_ref)
    context = models.embed(params, batch.get("clip_image"), b) * keep[:, None, None]
    pred = predict_target(models, config, params, batch, z_ref, _flat_frames(z_t, video),
                          jnp.repeat(t, frames), context, keep)
    gamma = config.diffusion.snr_gamma or None
    return losses.diffusion_loss(schedule, pred.reshape(z0.shape), z0, noise, t, snr_gamma=gamma, mask=mask)


def compute_loss(models: Models, config, schedule: schedules.Schedule, params: Any, batch: dict,
                 rng: jax.Array) -> tuple[jax.Array, dict]:
    """Scalar training loss (target only) and auxiliary metrics for one batch; the draws come from `rng`."""
    return loss_given(models, config, schedule, params, batch, draw(models, config, schedule, batch, rng))


def make_train_step(models: Models, config, tx: optim.AdamW,
                    schedule: schedules.Schedule) -> Callable[..., tuple[State, dict]]:
    """Returns the pure step `(state, frozen, batch, rng) -> (state, metrics)` (jit it with shardings).

    Args:
      models: module bundle (UNet, pose encoder, optional VAE and image encoder).
      config: training config.
      tx: the optimizer over the trainable tree.
      schedule: training noise schedule.
    """
    ema_decay = float(config.optim.ema_decay)

    def loss_fn(trainable, frozen, batch, rng):
        return compute_loss(models, config, schedule, optim.merge(trainable, frozen), batch, rng)

    def train_step(state: State, frozen: Any, batch: dict, rng: jax.Array) -> tuple[State, dict]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], frozen, batch, rng)
        grad_norm, grads_finite = optim.norm_and_finite(grads)
        finite = jnp.isfinite(loss) & grads_finite
        params, opt_state = tx.update(grads, state["opt_state"], state["params"], grad_norm, finite)
        # From the gated parameters (the new ones whenever the EMA moves): no fusion re-reads the old ones.
        ema = optim.ema_update(state["ema"], params, ema_decay, finite) if ema_decay > 0 else state["ema"]
        new_state = {"step": state["step"] + 1, "params": params, "ema": ema, "opt_state": opt_state}
        metrics = {"loss": loss, "mse": aux["mse"], "grad_norm": grad_norm,
                   "lr": tx.lr(state["step"]), "finite": finite.astype(jnp.float32)}
        return new_state, metrics

    return train_step
