"""The SCD train step: a pure function `state, frozen, batch, rng -> state, metrics`.

One step:
1. pose features of the target pose (and of the reference pose when `model.use_ref_pose`);
2. latents: VAE encode of reference and target (pixel space when there is no VAE);
3. context: CLIP image embedding of the reference as one cross-attention token, zeroed where the condition is
   dropped (`batch["drop_cond"]`), or a zero token when there is no image encoder;
4. noise (with offset) and uniform timesteps; try-on noises only inside the garment mask;
5. two-pass form: reference pass at `diffusion.ref_timestep` writing the K/V cache, then the target pass reading
   it (`ref_keep = ~drop_cond` hides the reference from dropped entries); joint form: one pass over
   `[ref ; tgt]` entries with the block-causal (or full) mask. Gradients flow through the reference pass;
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
from humandiff.training import optim
from humandiff.training.modeling import Models

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


def _encode(models: Models, params: Any, x: jax.Array, rng: jax.Array) -> jax.Array:
    """Images `[N,H,W,3]` in [-1, 1] -> latents (sampled from the VAE posterior, scaled); identity without a VAE."""
    if models.vae is None:
        return x
    mean, logvar = models.vae.apply({"params": params["vae"]}, x, method=models.vae.encode)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return jax.lax.stop_gradient(z * models.scaling_factor)


def _context(models: Models, params: Any, batch: dict, keep: jax.Array) -> jax.Array:
    """`[B, 1, D]` cross-attention context: the reference's image embedding, zero where the condition is dropped."""
    b = keep.shape[0]
    if models.image_encoder is None:
        return jnp.zeros((b, 1, models.context_dim), jnp.float32)
    out = models.image_encoder.apply({"params": params["image_encoder"]}, batch["clip_image"])
    emb = out["image_embeds"] if isinstance(out, dict) else getattr(out, "image_embeds", out)
    emb = jax.lax.stop_gradient(emb.astype(jnp.float32))
    return (emb * keep[:, None].astype(emb.dtype))[:, None, :]


def _pose(models: Models, params: Any, pose: jax.Array) -> jax.Array:
    return models.pose_encoder.apply({"params": params["pose_encoder"]}, pose)


def predict_target(models: Models, config, params: Any, batch: dict, z_ref: jax.Array, z_t: jax.Array,
                   t: jax.Array, context: jax.Array, keep: jax.Array) -> jax.Array:
    """Runs the reference and target passes (two-pass or joint) and returns the target prediction.

    Args:
      models: the module bundle.
      config: training config (`train.form`, `model.use_ref_pose`, `diffusion.ref_timestep`).
      params: full parameter tree (trainable + frozen).
      batch: the training batch (poses are read from it).
      z_ref: reference input latents `[B, h, w, C]` (already noised to `ref_timestep` when it is > 0).
      z_t: noisy target latents `[B*F, h, w, C]`.
      t: target timesteps `[B*F]`.
      context: `[B, 1, D]` cross-attention context per reference.
      keep: bool `[B]`, False where the reference is dropped.

    Returns:
      `[B*F, h, w, C]` model output for the target entries.
    """
    b = z_ref.shape[0]
    frames = z_t.shape[0] // b
    video = batch["tgt_pose"].ndim == 5
    unet = models.unet
    pose_tgt = _pose(models, params, _flat_frames(batch["tgt_pose"], video))
    pose_ref = _pose(models, params, batch["ref_pose"]) if config.model.use_ref_pose else None
    t_ref = jnp.full((b,), config.diffusion.ref_timestep, jnp.int32)
    rep = lambda x: jnp.repeat(x, frames, axis=0)  # noqa: E731 - per-reference value for each of its frames
    if config.train.form == "joint":
        if pose_ref is None:
            pose_ref = jnp.zeros_like(pose_tgt)
        out = unet.apply({"params": params["unet"]}, jnp.concatenate([z_ref, z_t]), jnp.concatenate([t_ref, t]),
                         jnp.concatenate([context, context]),
                         pose_features=jnp.concatenate([pose_ref, pose_tgt]), scd_mode="joint", ref_keep=keep)
        return out[b:]
    _, cache = unet.apply({"params": params["unet"]}, z_ref, t_ref, context, pose_features=pose_ref,
                          scd_mode="write", mutable=["ref_kv"])
    return unet.apply({"params": params["unet"], "ref_kv": cache["ref_kv"]}, z_t, t, rep(context),
                      pose_features=pose_tgt, scd_mode="read", ref_keep=rep(keep), num_frames=frames)


def compute_loss(models: Models, config, schedule: schedules.Schedule, params: Any, batch: dict,
                 rng: jax.Array) -> tuple[jax.Array, dict]:
    """Scalar training loss (target only) and auxiliary metrics for one batch."""
    k_vae, k_noise, k_t, k_ref = jax.random.split(rng, 4)
    keep = ~batch["drop_cond"].astype(bool)
    video = batch["tgt_image"].ndim == 5
    b = batch["ref_image"].shape[0]
    frames = batch["tgt_image"].shape[1] if video else 1
    k_vae_ref, k_vae_tgt = jax.random.split(k_vae)
    z_ref = _encode(models, params, batch["ref_image"], k_vae_ref)
    z0 = _encode(models, params, _flat_frames(batch["tgt_image"], video), k_vae_tgt)
    z0 = z0.reshape((b, frames) + z0.shape[1:]) if video else z0
    noise = schedules.sample_noise(k_noise, z0.shape, config.diffusion.noise_offset)
    t = schedules.sample_timesteps(k_t, b, schedule)
    mask = None
    if config.task == "tryon":
        mask = schedules.latent_mask(batch["tryon_mask"], z0.shape[1:3])
        z_t = schedules.q_sample_masked(schedule, z0, noise, t, mask)
    else:
        z_t = schedules.q_sample(schedule, z0, noise, t)
    if config.diffusion.ref_timestep > 0:
        t_ref = jnp.full((b,), config.diffusion.ref_timestep, jnp.int32)
        z_ref = schedules.q_sample(schedule, z_ref, jax.random.normal(k_ref, z_ref.shape), t_ref)
    context = _context(models, params, batch, keep)
    pred = predict_target(models, config, params, batch, z_ref, _flat_frames(z_t, video),
                          jnp.repeat(t, frames), context, keep)
    pred = pred.reshape(z0.shape)
    gamma = config.diffusion.snr_gamma or None
    loss, aux = losses.diffusion_loss(schedule, pred, z0, noise, t, snr_gamma=gamma, mask=mask)
    return loss, aux


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
