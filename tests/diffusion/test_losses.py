"""Training loss: target choice, min-SNR-gamma weighting, try-on mask, mean over valid elements."""

import numpy as np

import jax
import jax.numpy as jnp

from humandiff.diffusion import losses, schedules
from humandiff.diffusion.schedules import Schedule


def _data(shape=(3, 8, 8, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(a) for a in rng.standard_normal((3,) + shape).astype(np.float32)]


def test_zero_loss_at_the_target_and_v_target():
    x0, noise, _ = _data()
    t = jnp.array([10, 500, 999])
    for pred in ("epsilon", "v_prediction"):
        sched = Schedule.create(zero_terminal_snr=True, prediction_type=pred)
        target = noise if pred == "epsilon" else schedules.velocity(sched, x0, noise, t)
        loss, aux = losses.diffusion_loss(sched, target, x0, noise, t, snr_gamma=5.0)
        assert float(loss) == 0.0 and float(aux["mse"]) == 0.0


def test_min_snr_weighting_and_plain_mean():
    x0, noise, out = _data()
    t = jnp.array([10, 500, 990])
    sched = Schedule.create(prediction_type="v_prediction")
    plain, aux = losses.diffusion_loss(sched, out, x0, noise, t)
    target = schedules.velocity(sched, x0, noise, t)
    per = np.asarray(((out - target) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(plain, per.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], per.mean(), rtol=1e-5)
    weighted, _ = losses.diffusion_loss(sched, out, x0, noise, t, snr_gamma=5.0)
    w = np.asarray(schedules.min_snr_weight(sched, t, 5.0))
    np.testing.assert_allclose(weighted, (w * per).mean(), rtol=1e-5)


def test_mask_restricts_loss_and_video_shapes():
    x0, noise, out = _data((2, 2, 8, 8, 4))  # video [B, F, h, w, C], timesteps per video
    t = jnp.array([100, 700])
    sched = Schedule.create()
    mask = np.zeros((2, 1, 8, 8, 1), np.float32)
    mask[:, :, :4] = 1
    loss, _ = losses.diffusion_loss(sched, out, x0, noise, t, mask=jnp.asarray(mask))
    sq = np.asarray((out - noise) ** 2)
    np.testing.assert_allclose(loss, sq[:, :, :4].mean(), rtol=1e-5)
    # Changing the prediction outside the mask does not change the loss.
    out2 = jnp.where(jnp.asarray(mask) > 0, out, out + 10.0)
    loss2, _ = losses.diffusion_loss(sched, out2, x0, noise, t, mask=jnp.asarray(mask))
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    # Gradient flows to the prediction only, and only inside the mask.
    g = jax.grad(lambda o: losses.diffusion_loss(sched, o, x0, noise, t, mask=jnp.asarray(mask))[0])(out)
    assert np.abs(np.asarray(g)[:, :, 4:]).max() == 0 and np.abs(np.asarray(g)[:, :, :4]).max() > 0
