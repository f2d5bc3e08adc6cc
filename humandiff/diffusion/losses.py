"""The SCD training loss: MSE on the target half only, with optional min-SNR-gamma weights and try-on mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from humandiff.diffusion import schedules


def diffusion_loss(
    schedule: schedules.Schedule,
    model_out: jax.Array,
    x0: jax.Array,
    noise: jax.Array,
    t: jax.Array,
    *,
    snr_gamma: float | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted MSE between the model output and its target (noise or velocity, per the schedule).

    Only the target is passed here: the reference half of a joint pass carries no loss.

    Args:
      schedule: schedule whose `prediction_type` picks the target.
      model_out: model prediction, `[N, h, w, C]` (or `[B, F, h, w, C]`).
      x0: clean target latents, same shape.
      noise: the noise used to make `x_t`, same shape.
      t: integer timesteps, `[N]` (or `[B]` for `[B, F, ...]` inputs).
      snr_gamma: min-SNR-gamma clamp; None weighs every timestep equally.
      mask: optional try-on mask broadcastable to `x0` (e.g. `[N, h, w, 1]`), 1 = generated region; the loss is
        taken only inside it.

    Returns:
      `(loss, aux)`: the scalar loss (weighted squared error summed over valid elements, divided by the number of
      valid elements) and `aux` with the unweighted `mse` and the mean `weight`.
    """
    if model_out.shape != x0.shape or noise.shape != x0.shape:
        raise ValueError(f"model_out {model_out.shape}, x0 {x0.shape} and noise {noise.shape} must match")
    target = schedules.training_target(schedule, x0, noise, t)
    sq = jnp.square(model_out.astype(jnp.float32) - jax.lax.stop_gradient(target).astype(jnp.float32))
    valid = jnp.ones_like(sq) if mask is None else jnp.broadcast_to(mask.astype(jnp.float32), sq.shape)
    if snr_gamma is None:
        weight = jnp.ones(t.shape, jnp.float32)
    else:
        weight = schedules.min_snr_weight(schedule, t, snr_gamma)
    count = jnp.maximum(valid.sum(), 1.0)
    loss = (schedules.bcast(weight, sq) * sq * valid).sum() / count
    mse = (sq * valid).sum() / count
    return loss, {"mse": mse, "weight": weight.mean()}
