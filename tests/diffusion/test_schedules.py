"""Schedules: tables bit-identical to diffusers, forward process, conversions, weights, try-on forward process."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from humandiff.diffusion import schedules
from humandiff.diffusion.schedules import Schedule, ScheduleConfig

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")


@pytest.mark.parametrize("beta_schedule,start,end", [("scaled_linear", 0.00085, 0.012), ("linear", 0.0001, 0.02)])
def test_tables_match_diffusers(beta_schedule, start, end):
    # Plain schedules are bit-identical; the zero-SNR rescale differs from torch's in-place ops by a few ulp.
    for zsnr in (False, True):
        ref = diffusers.DDIMScheduler(beta_schedule=beta_schedule, beta_start=start, beta_end=end,
                                      rescale_betas_zero_snr=zsnr)
        ours = ScheduleConfig(beta_start=start, beta_end=end, beta_schedule=beta_schedule, zero_terminal_snr=zsnr)
        got, want = ours.alphas_cumprod(), ref.alphas_cumprod.numpy()
        if zsnr:
            assert got[-1] == 0.0
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
        else:
            np.testing.assert_array_equal(got, want)


def test_q_sample_and_velocity_match_diffusers():
    ref = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  rescale_betas_zero_snr=True, prediction_type="v_prediction")
    sched = Schedule.create(zero_terminal_snr=True, prediction_type="v_prediction")
    rng = np.random.default_rng(0)
    x0, noise = rng.standard_normal((2, 2, 8, 8, 4)).astype(np.float32)
    t = np.array([17, 999])
    xt = schedules.q_sample(sched, x0, noise, t)
    np.testing.assert_allclose(xt, ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)),
                               atol=1e-6)
    v = schedules.velocity(sched, x0, noise, t)
    np.testing.assert_allclose(v, ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)),
                               atol=1e-6)
    # Zero terminal SNR: x_{T-1} is pure noise, and v-prediction still recovers x0 and eps there.
    np.testing.assert_array_equal(xt[1], noise[1])
    np.testing.assert_allclose(schedules.x0_from_v(sched, xt, v, t), x0, atol=1e-5)
    np.testing.assert_allclose(schedules.eps_from_v(sched, xt, v, t), noise, atol=1e-5)
    x0_hat, eps_hat = schedules.predict_x0_eps(sched, xt, v, t)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-5)
    np.testing.assert_allclose(eps_hat, noise, atol=1e-5)


def test_eps_conversions_round_trip():
    sched = Schedule.create()
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 4, 4, 4, 3)).astype(np.float32)
    t = np.array([3, 500, 998, 0])
    xt = schedules.q_sample(sched, x0, noise, t)
    np.testing.assert_allclose(schedules.x0_from_eps(sched, xt, noise, t), x0, atol=2e-4)
    np.testing.assert_allclose(schedules.eps_from_x0(sched, xt[:3], x0[:3], t[:3]), noise[:3], atol=2e-3)
    v = schedules.velocity(sched, x0, noise, t)
    np.testing.assert_allclose(schedules.v_from_eps(sched, xt, noise, t), v, atol=1e-4)
    assert schedules.training_target(sched, x0, noise, t) is noise


def test_min_snr_weights():
    for pred in ("epsilon", "v_prediction"):
        sched = Schedule.create(zero_terminal_snr=True, prediction_type=pred)
        t = jnp.arange(1000)
        w = np.asarray(schedules.min_snr_weight(sched, t, 5.0))
        snr = np.asarray(schedules.snr(sched, t), np.float64)
        assert np.isfinite(w).all() and snr[-1] == 0
        body = slice(0, 999)
        with np.errstate(invalid="ignore", divide="ignore"):
            want = np.minimum(snr, 5.0) / (snr + 1.0 if pred == "v_prediction" else snr)
        np.testing.assert_allclose(w[body], want[body], rtol=1e-5)
        assert w[-1] == (0.0 if pred == "v_prediction" else 1.0)
        assert (w <= 1.0 + 1e-6).all()


def test_noise_offset_adds_a_per_channel_constant():
    shape = (4, 2, 16, 16, 3)  # a video batch: one offset per video and channel
    rng = jax.random.key(0)
    base = schedules.sample_noise(rng, shape)
    offs = schedules.sample_noise(rng, shape, noise_offset=0.5)
    diff = np.asarray(offs - base)
    assert np.abs(diff - diff[:, :1, :1, :1, :]).max() < 1e-5
    assert np.abs(diff).max() > 0.01
    assert diff.std(axis=(1, 2, 3)).max() < 1e-5  # float32 rounding of (noise + offset) - noise


def test_tryon_forward_keeps_clean_outside_mask():
    sched = Schedule.create(zero_terminal_snr=True)
    rng = np.random.default_rng(2)
    x0, noise = rng.standard_normal((2, 2, 8, 8, 4)).astype(np.float32)
    mask = np.zeros((2, 8, 8, 1), np.float32)
    mask[:, 2:6, 3:7] = 1
    xt = np.asarray(schedules.q_sample_masked(sched, x0, noise, np.array([999, 400]), mask))
    out = np.broadcast_to(mask == 0, xt.shape)
    np.testing.assert_array_equal(xt[out], x0[out])
    np.testing.assert_array_equal(xt[0][~out[0]], noise[0][~out[0]])
    pix = np.zeros((1, 16, 16, 1), np.float32)
    pix[0, 5, 9] = 1
    lat = np.asarray(schedules.latent_mask(pix, (2, 2)))
    np.testing.assert_array_equal(lat[0, :, :, 0], [[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="multiple"):
        schedules.latent_mask(pix, (3, 3))


def test_config_from_dict_and_errors():
    cfg = schedules.schedule_config_from({"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                                          "beta_schedule": "linear", "clip_sample": False})
    assert cfg.zero_terminal_snr and cfg.prediction_type == "v_prediction" and cfg.beta_schedule == "linear"
    with pytest.raises(ValueError, match="beta_schedule"):
        ScheduleConfig(beta_schedule="cosine")
    with pytest.raises(ValueError, match="prediction_type"):
        ScheduleConfig(prediction_type="sample")
