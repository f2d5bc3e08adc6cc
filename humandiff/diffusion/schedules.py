"""Noise schedules and the forward process, as pure functions.

Two layers:
- *Tables* (betas, alphas_cumprod) depend only on static config values. They are built once on the host in
  numpy float32 with the same operation order as diffusers' torch schedulers, so the tables are bit-identical
  (zero-terminal-SNR ones only where torch's float32 sqrt is correctly rounded: torch takes it from MKL, whose
  kernel depends on the CPU; elsewhere they differ by a few ulps, see tests/diffusion/test_sampler_parity.py):
  eps-prediction amplifies table error by 1/sqrt(alphas_cumprod) (up to ~160x at t=999 for linear betas), and
  a float64 table differs from torch's float32 one by ~1e-6 relative, which alone breaks 1e-5 parity.
- *Traced* functions (`q_sample`, the eps/v/x0 conversions, SNR, min-SNR-gamma weights, noise offset, the try-on
  forward process) take a `Schedule` pytree and jnp arrays and are jittable.

Shapes: a per-example quantity (timestep, weight) of shape `[N]` broadcasts against an array `[N, ...]` by
appending trailing singleton axes; `[B]` also broadcasts against `[B, F, ...]` (video).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")


F32 = np.float32


def _linspace_f32(start: float, end: float, num: int) -> np.ndarray:
    """float32 linspace computed the way torch's CPU kernel does (bit-identical tables, hence sampler parity).

    The step is rounded to float32; each value is `start + step * i` (first half) or `end - step * (num-1-i)`
    (second half), evaluated in double and rounded once.
    """
    a, b = F32(start), F32(end)
    step = F32((b - a) / F32(num - 1))
    i = np.arange(num, dtype=np.float64)
    low = np.float64(a) + np.float64(step) * i
    high = np.float64(b) - np.float64(step) * (num - 1 - i)
    return np.where(i < num // 2, low, high).astype(F32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    """float32 cumulative product with a double accumulator (torch's CPU semantics)."""
    return np.cumprod(x.astype(np.float64)).astype(F32)


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Betas spaced linearly from `beta_start` to `beta_end` (float32, host)."""
    return _linspace_f32(beta_start, beta_end, num_train_timesteps)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Stable Diffusion's schedule: square roots of the betas spaced linearly (float32, host)."""
    return _linspace_f32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescales betas so that the last timestep has SNR exactly 0 (Lin et al. 2023, Algorithm 1).

    sqrt(alphas_cumprod) is shifted so its last value is 0 and scaled so its first value is unchanged.
    """
    sqrt_acp = np.sqrt(_cumprod_f32(F32(1) - np.asarray(betas, F32)))
    first, last = sqrt_acp[0], sqrt_acp[-1]
    sqrt_acp = (sqrt_acp - last) * (first / (first - last))
    acp = sqrt_acp**2
    alphas = np.concatenate([acp[:1], acp[1:] / acp[:-1]])
    return F32(1) - alphas


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Static description of a discrete diffusion schedule (hashable: usable as a jit static value).

    Attributes:
      num_train_timesteps: number of discrete training timesteps T.
      beta_start: first beta (for "scaled_linear": squared end point).
      beta_end: last beta.
      beta_schedule: "linear" or "scaled_linear".
      zero_terminal_snr: rescale betas so alphas_cumprod[T-1] == 0.
      prediction_type: what the model predicts, "epsilon" or "v_prediction".
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    zero_terminal_snr: bool = False
    prediction_type: str = "epsilon"

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={self.beta_schedule!r}; expected one of {BETA_SCHEDULES}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={self.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps} must be >= 2")

    def betas(self) -> np.ndarray:
        """float32 betas `[T]` on the host."""
        fn = linear_betas if self.beta_schedule == "linear" else scaled_linear_betas
        betas = fn(self.num_train_timesteps, self.beta_start, self.beta_end)
        return rescale_zero_terminal_snr(betas) if self.zero_terminal_snr else betas

    def alphas_cumprod(self) -> np.ndarray:
        """float32 alphas_cumprod `[T]` on the host (0 at T-1 under zero-terminal-SNR, up to rounding)."""
        return _cumprod_f32(F32(1) - self.betas())


def _field(cfg: Any, names: tuple[str, ...], default: Any) -> Any:
    for name in names:
        if isinstance(cfg, Mapping) and name in cfg:
            return cfg[name]
        if not isinstance(cfg, Mapping) and hasattr(cfg, name):
            return getattr(cfg, name)
    return default


def schedule_config_from(cfg: Any) -> ScheduleConfig:
    """Builds a `ScheduleConfig` from a ConfigDict, a dict or a diffusers `scheduler_config.json` dict.

    Accepts both our names and diffusers' (`rescale_betas_zero_snr` for `zero_terminal_snr`); missing fields
    take the `ScheduleConfig` defaults.
    """
    d = ScheduleConfig()
    return ScheduleConfig(
        num_train_timesteps=int(_field(cfg, ("num_train_timesteps",), d.num_train_timesteps)),
        beta_start=float(_field(cfg, ("beta_start",), d.beta_start)),
        beta_end=float(_field(cfg, ("beta_end",), d.beta_end)),
        beta_schedule=str(_field(cfg, ("beta_schedule",), d.beta_schedule)),
        zero_terminal_snr=bool(_field(cfg, ("zero_terminal_snr", "rescale_betas_zero_snr"), d.zero_terminal_snr)),
        prediction_type=str(_field(cfg, ("prediction_type",), d.prediction_type)),
    )


@struct.dataclass
class Schedule:
    """The traced schedule: float32 alphas_cumprod plus its static config."""

    alphas_cumprod: jax.Array  # [T] float32
    config: ScheduleConfig = struct.field(pytree_node=False)

    @classmethod
    def create(cls, config: ScheduleConfig | None = None, **kwargs) -> "Schedule":
        """`Schedule.create(ScheduleConfig(...))` or `Schedule.create(beta_schedule=..., ...)`."""
        config = config if config is not None else ScheduleConfig(**kwargs)
        return cls(alphas_cumprod=jnp.asarray(config.alphas_cumprod(), jnp.float32), config=config)

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type


def bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    """Appends singleton axes to a per-example `v` so it broadcasts against `like`."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def alpha_sigma(schedule: Schedule, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(sqrt(alphas_cumprod[t]), sqrt(1 - alphas_cumprod[t]))` for integer timesteps `t`."""
    acp = schedule.alphas_cumprod[jnp.asarray(t, jnp.int32)]
    return jnp.sqrt(acp), jnp.sqrt(1.0 - acp)


def q_sample(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """Forward process `x_t = alpha_t x0 + sigma_t noise`."""
    a, s = alpha_sigma(schedule, t)
    return bcast(a, x0) * x0 + bcast(s, x0) * noise


def velocity(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """v-prediction target `v = alpha_t noise - sigma_t x0`."""
    a, s = alpha_sigma(schedule, t)
    return bcast(a, x0) * noise - bcast(s, x0) * x0


def x0_from_eps(schedule: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """`x0 = (x_t - sigma_t eps) / alpha_t` (undefined where alpha_t == 0: use v-prediction there)."""
    a, s = alpha_sigma(schedule, t)
    return (x_t - bcast(s, x_t) * eps) / bcast(a, x_t)


def eps_from_x0(schedule: Schedule, x_t: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
    """`eps = (x_t - alpha_t x0) / sigma_t`."""
    a, s = alpha_sigma(schedule, t)
    return (x_t - bcast(a, x_t) * x0) / bcast(s, x_t)


def x0_from_v(schedule: Schedule, x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """`x0 = alpha_t x_t - sigma_t v`."""
    a, s = alpha_sigma(schedule, t)
    return bcast(a, x_t) * x_t - bcast(s, x_t) * v


def eps_from_v(schedule: Schedule, x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """`eps = sigma_t x_t + alpha_t v`."""
    a, s = alpha_sigma(schedule, t)
    return bcast(s, x_t) * x_t + bcast(a, x_t) * v


def v_from_eps(schedule: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """`v = (eps - sigma_t x_t) / alpha_t`."""
    a, s = alpha_sigma(schedule, t)
    return (eps - bcast(s, x_t) * x_t) / bcast(a, x_t)


def predict_x0_eps(schedule: Schedule, x_t: jax.Array, model_out: jax.Array, t: jax.Array):
    """`(x0, eps)` from a model output interpreted per `schedule.prediction_type`."""
    if schedule.prediction_type == "v_prediction":
        return x0_from_v(schedule, x_t, model_out, t), eps_from_v(schedule, x_t, model_out, t)
    return x0_from_eps(schedule, x_t, model_out, t), model_out


def training_target(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """What the model is trained to predict: `noise` (epsilon) or `velocity` (v_prediction)."""
    if schedule.prediction_type == "v_prediction":
        return velocity(schedule, x0, noise, t)
    return noise


def snr(schedule: Schedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio `alphas_cumprod / (1 - alphas_cumprod)` at integer timesteps (0 at a zero-SNR end)."""
    acp = schedule.alphas_cumprod[jnp.asarray(t, jnp.int32)]
    return acp / (1.0 - acp)


def min_snr_weight(schedule: Schedule, t: jax.Array, gamma: float, prediction_type: str | None = None) -> jax.Array:
    """Min-SNR-gamma loss weight (Hang et al. 2023) for the MSE on the model's own target.

    epsilon target: `min(snr, gamma) / snr` (its limit 1 where snr == 0); v target: `min(snr, gamma) / (snr + 1)`.

    Args:
      schedule: the schedule.
      t: integer timesteps `[N]`.
      gamma: the clamp value (5 in the paper and the ReferenceNet recipes).
      prediction_type: override of `schedule.prediction_type`.

    Returns:
      float32 weights `[N]`.
    """
    kind = prediction_type or schedule.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={kind!r}; expected one of {PREDICTION_TYPES}")
    s = snr(schedule, t)
    clipped = jnp.minimum(s, gamma)
    if kind == "v_prediction":
        return clipped / (s + 1.0)
    return jnp.where(s > 0, clipped / jnp.where(s > 0, s, 1.0), 1.0)


def sample_noise(rng: jax.Array, shape: tuple[int, ...], noise_offset: float = 0.0, dtype=jnp.float32) -> jax.Array:
    """Gaussian noise, plus the "offset noise" term `noise_offset * n_c` constant over space per channel.

    The offset term has shape `[shape[0], 1, ..., 1, C]` (NHWC; a video `[B, F, H, W, C]` gets one offset per
    video and channel) and lets the model learn to change an image's mean brightness.
    """
    k_noise, k_off = jax.random.split(rng)
    noise = jax.random.normal(k_noise, shape, dtype)
    if noise_offset:
        offset_shape = (shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],)
        noise = noise + noise_offset * jax.random.normal(k_off, offset_shape, dtype)
    return noise


def sample_timesteps(rng: jax.Array, batch: int, schedule: Schedule) -> jax.Array:
    """Uniform integer training timesteps `[batch]` in `[0, T)`."""
    return jax.random.randint(rng, (batch,), 0, schedule.num_train_timesteps)


def masked_forward(noised: jax.Array, x0: jax.Array, mask: jax.Array) -> jax.Array:
    """Try-on forward process `x_t = noised * M + x0 * (1 - M)`: only the masked region is noised."""
    mask = mask.astype(noised.dtype)
    return noised * mask + x0 * (1.0 - mask)


def q_sample_masked(
    schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array, mask: jax.Array
) -> jax.Array:
    """`masked_forward(q_sample(x0, noise, t), x0, mask)`; `mask` broadcasts to `x0` (e.g. `[B, h, w, 1]`)."""
    return masked_forward(q_sample(schedule, x0, noise, t), x0, mask)


def latent_mask(mask: jax.Array, latent_hw: tuple[int, int]) -> jax.Array:
    """Pixel mask `[B, H, W, 1]` -> latent mask `[B, h, w, 1]`: a latent cell is 1 if any of its pixels is.

    Max-pooling keeps every garment pixel inside the generated region (nearest-neighbour could drop thin parts).
    """
    b, hh, ww, c = mask.shape
    h, w = latent_hw
    if hh % h or ww % w:
        raise ValueError(f"mask size {(hh, ww)} is not a multiple of the latent size {(h, w)}")
    fh, fw = hh // h, ww // w
    return mask.astype(jnp.float32).reshape(b, h, fh, w, fw, c).max(axis=(2, 4))
