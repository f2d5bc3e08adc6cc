"""DDIM, DPM-Solver++(2M) and Euler samplers: host-built step tables and a jittable `lax.scan` loop.

Each sampler matches the diffusers torch scheduler of the same name step for step (timesteps, spacing,
zero-terminal-SNR handling, final-step order), so that a model trained with the public recipes samples the same
way here. A `Sampler` is a pytree of per-step float32 tables `[S]` plus static fields; `sample()` runs

    x = noise * init_sigma
    for i in range(S):
        out = model_fn(x / input_scale[i], timesteps[i])
        x = step(x, out, i)

Tables are computed once on the host in numpy float32 with diffusers' operation order (see `schedules`), and
the step arithmetic rounds as torch does (see `_div`, `_mul`). Not implemented: DDIM sample clipping / dynamic
thresholding, Karras / exponential sigmas, SDE variants, Euler's s_churn.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from humandiff import config_lib
from humandiff.diffusion.schedules import ScheduleConfig

SAMPLERS = config_lib.SAMPLERS
SPACINGS = ("leading", "trailing", "linspace")
ALIASES = config_lib.SAMPLER_ALIASES

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


@struct.dataclass
class Sampler:
    """Per-step tables of one sampler for one number of steps.

    Attributes:
      timesteps: `[S]` float32 timesteps fed to the model (integers for DDIM/DPM, may be fractional for Euler).
      input_scale: `[S]` model input = state / input_scale (1 except Euler's sqrt(sigma^2 + 1)).
      init_sigma: scalar; initial state = noise * init_sigma.
      coef: dict of `[S]` float32 step coefficients (sampler specific).
      alphas_cumprod: `[T]` float32 training schedule (noises a reference fed at a timestep > 0).
      kind: "ddim" | "dpmsolver++" | "euler".
      prediction_type: "epsilon" | "v_prediction".
      stochastic: DDIM with eta > 0 (draws noise each step).
    """

    timesteps: jax.Array
    input_scale: jax.Array
    init_sigma: jax.Array
    coef: dict
    alphas_cumprod: jax.Array
    kind: str = struct.field(pytree_node=False)
    prediction_type: str = struct.field(pytree_node=False)
    stochastic: bool = struct.field(pytree_node=False, default=False)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])


def spaced_timesteps(kind: str, spacing: str, num_steps: int, num_train: int, steps_offset: int = 0) -> np.ndarray:
    """Inference timesteps, high to low, as each diffusers scheduler computes them (float64 for Euler)."""
    if spacing not in SPACINGS:
        raise ValueError(f"timestep spacing {spacing!r}; expected one of {SPACINGS}")
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps={num_steps} must be in [1, {num_train}]")
    if kind == "dpmsolver++":
        # DPM-Solver spaces S+1 points and drops the last (the final sigma is appended separately).
        if spacing == "linspace":
            return np.linspace(0, num_train - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
        if spacing == "leading":
            ratio = num_train // (num_steps + 1)
            return (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset
    elif spacing == "linspace":
        ts = np.linspace(0, num_train - 1, num_steps, dtype=np.float32 if kind == "euler" else np.float64)[::-1]
        return ts.copy() if kind == "euler" else ts.round().astype(np.int64)
    elif spacing == "leading":
        ratio = num_train // num_steps
        return (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    ratio = num_train / num_steps  # trailing
    return np.round(np.arange(num_train, 0, -ratio)).astype(np.int64) - 1


F32 = np.float32


def _f32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, F32), jnp.float32)


def _ddim_tables(cfg: ScheduleConfig, ts: np.ndarray, eta: float, set_alpha_to_one: bool):
    acp = cfg.alphas_cumprod()
    one = F32(1)
    final = one if set_alpha_to_one else acp[0]
    prev = ts - cfg.num_train_timesteps // len(ts)  # diffusers' DDIM uses this fixed stride for every spacing
    a_t = acp[ts]
    a_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], final).astype(F32)
    b_t, b_prev = one - a_t, one - a_prev
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.where(b_t > 0, (b_prev / b_t) * (one - a_t / a_prev), F32(0)).astype(F32)
    std = (F32(eta) * np.sqrt(variance)).astype(F32)
    coef = {
        "sqrt_a": np.sqrt(a_t), "sqrt_b": np.sqrt(b_t), "sqrt_a_prev": np.sqrt(a_prev),
        "dir": np.sqrt(np.maximum(one - a_prev - std**2, F32(0))), "std": std,
    }
    return coef, np.ones(len(ts), F32), one


def _sigma_tables(cfg: ScheduleConfig) -> np.ndarray:
    """Full-length float32 sigmas; zero-SNR clamps the last alphas_cumprod to 2^-24 as diffusers does."""
    acp = cfg.alphas_cumprod()
    if cfg.zero_terminal_snr:
        acp[-1] = F32(2.0**-24)
    return np.sqrt((F32(1) - acp) / acp)


def _interp_sigmas(cfg: ScheduleConfig, ts: np.ndarray) -> np.ndarray:
    """Sigmas at (possibly fractional) timesteps with a final zero sigma, `[S + 1]` float32."""
    sig = np.interp(ts, np.arange(cfg.num_train_timesteps), _sigma_tables(cfg))
    return np.concatenate([sig, [0.0]]).astype(F32)


def _dpm_tables(cfg: ScheduleConfig, ts: np.ndarray):
    sig = _interp_sigmas(cfg, ts)
    one = F32(1)
    alpha = one / np.sqrt(sig**2 + one)
    sigma = sig * alpha
    def log(v):  # correctly rounded float32 log (matches torch's on these tables; numpy's float32 log does not)
        with np.errstate(divide="ignore"):
            return np.log(v.astype(np.float64)).astype(F32)

    lam = log(alpha) - log(sigma)  # +inf at the final zero sigma
    n = len(ts)
    cur, nxt = np.arange(n), np.arange(n) + 1
    h = lam[nxt] - lam[cur]
    # exp(-h) - 1, -1 at the final step (h = inf). torch's float32 exp (SLEEF) is not correctly rounded; a
    # correctly rounded one agrees with it on most steps, numpy's float32 exp on fewer.
    em1 = np.exp(-h.astype(np.float64)).astype(F32) - one
    h_prev = np.concatenate([[F32(1)], lam[cur[1:]] - lam[cur[:-1]]]).astype(F32)
    # First and final steps are first order (final_sigmas_type="zero" forces the latter); the rest 2M midpoint.
    second = (cur > 0) & (cur < n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_r0 = np.where(second, one / (h_prev / h), F32(0)).astype(F32)
        b = alpha[nxt] * em1
    coef = {
        "alpha_s": alpha[cur], "sigma_s": sigma[cur], "ratio": sigma[nxt] / sigma[cur], "b": b,
        "inv_r0": inv_r0, "c": np.where(second, F32(0.5) * b, F32(0)),
    }
    return coef, np.ones(n, F32), one


def _euler_tables(cfg: ScheduleConfig, ts: np.ndarray, spacing: str):
    sig_all = _interp_sigmas(cfg, ts)
    sig, one = sig_all[:-1], F32(1)
    s2p1 = sig**2 + one
    coef = {"sigma": sig, "dt": sig_all[1:] - sig, "s2p1": s2p1, "v_k": -sig / np.sqrt(s2p1)}
    smax = sig_all.max()
    init = smax if spacing in ("linspace", "trailing") else np.sqrt(smax**2 + one)
    return coef, np.sqrt(s2p1), init


def make_sampler(
    schedule: ScheduleConfig,
    kind: str,
    num_steps: int,
    *,
    spacing: str = "trailing",
    eta: float = 0.0,
    steps_offset: int = 0,
    set_alpha_to_one: bool = False,
) -> Sampler:
    """Builds the step tables of a sampler (host side, cheap; the result is a jit argument).

    Args:
      schedule: static schedule description.
      kind: "ddim", "dpmsolver++" (alias "dpm++") or "euler".
      num_steps: number of denoising steps S.
      spacing: "leading", "trailing" (the zero-SNR default) or "linspace".
      eta: DDIM stochasticity (0 deterministic, 1 DDPM-like); other samplers ignore it.
      steps_offset: added to "leading" timesteps (SD-1.5's scheduler config uses 1).
      set_alpha_to_one: DDIM's last step goes to alphas_cumprod = 1 instead of alphas_cumprod[0].

    Returns:
      The `Sampler`.
    """
    kind = ALIASES.get(kind, kind)
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; expected one of {SAMPLERS} (or 'dpm++')")
    if eta < 0:
        raise ValueError(f"eta={eta} must be >= 0")
    ts = spaced_timesteps(kind, spacing, num_steps, schedule.num_train_timesteps, steps_offset)
    if kind == "ddim":
        coef, scale, init = _ddim_tables(schedule, ts, eta, set_alpha_to_one)
    elif kind == "dpmsolver++":
        coef, scale, init = _dpm_tables(schedule, ts)
    else:
        coef, scale, init = _euler_tables(schedule, ts, spacing)
    return Sampler(
        timesteps=_f32(ts), input_scale=_f32(scale), init_sigma=_f32(init),
        coef={**{k: _f32(v) for k, v in coef.items()}, "zero": jnp.zeros(len(ts), jnp.float32)},
        alphas_cumprod=_f32(schedule.alphas_cumprod()), kind=kind,
        prediction_type=schedule.prediction_type, stochastic=kind == "ddim" and eta > 0,
    )


def _div(x: jax.Array, c: jax.Array) -> jax.Array:
    """`x / c` for a scalar `c`, as a true IEEE division.

    XLA rewrites division by a broadcast scalar into multiplication by its reciprocal (one more rounding);
    hiding the broadcast behind an optimization barrier keeps the division torch performs.
    """
    return x / jax.lax.optimization_barrier(jnp.broadcast_to(c.astype(x.dtype), x.shape))


def _mul(c: dict, name: str, x: jax.Array) -> jax.Array:
    """`c[name] * x`, rounded to float32 before it is added to anything.

    XLA:CPU contracts `a * b + d` into a fused multiply-add (one rounding instead of torch's two), and the
    samplers amplify rounding differences by up to 1/sqrt(alphas_cumprod) per step. Adding the traced zero
    `c["zero"]` makes LLVM fuse the product with that zero instead (an exactly rounded product), so the sum that
    follows is a plain add, as in torch. Optimization barriers do not help: XLA:CPU drops them before fusion.
    """
    return c[name] * x + c["zero"]


def _ddim_step(s: Sampler, c: dict, x, out, prev_x0, noise):
    del prev_x0
    if s.prediction_type == "v_prediction":
        x0 = _mul(c, "sqrt_a", x) - _mul(c, "sqrt_b", out)
        eps = _mul(c, "sqrt_a", out) + _mul(c, "sqrt_b", x)
    else:
        x0 = _div(x - _mul(c, "sqrt_b", out), c["sqrt_a"])
        eps = out
    x_next = _mul(c, "sqrt_a_prev", x0) + _mul(c, "dir", eps)
    if s.stochastic:
        x_next = x_next + _mul(c, "std", noise)
    return x_next, x0


def _dpm_step(s: Sampler, c: dict, x, out, prev_x0, noise):
    del noise
    if s.prediction_type == "v_prediction":
        x0 = _mul(c, "alpha_s", x) - _mul(c, "sigma_s", out)
    else:
        x0 = _div(x - _mul(c, "sigma_s", out), c["alpha_s"])
    d1 = _mul(c, "inv_r0", x0 - prev_x0)
    x_next = _mul(c, "ratio", x) - _mul(c, "b", x0) - _mul(c, "c", d1)
    return x_next, x0


def _euler_step(s: Sampler, c: dict, x, out, prev_x0, noise):
    del prev_x0, noise
    if s.prediction_type == "v_prediction":
        x0 = _mul(c, "v_k", out) + _div(x, c["s2p1"])
    else:
        x0 = x - _mul(c, "sigma", out)
    derivative = _div(x - x0, c["sigma"])
    return x + _mul(c, "dt", derivative), x0


_STEPS = {"ddim": _ddim_step, "dpmsolver++": _dpm_step, "euler": _euler_step}


def step(
    sampler: Sampler, i: jax.Array, x: jax.Array, model_out: jax.Array, prev_x0: jax.Array,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One denoising step from state `x` at step index `i` (traced).

    Args:
      sampler: tables.
      i: step index in `[0, S)`.
      x: current state (sampler space: Euler's is sigma-scaled).
      model_out: the model's eps / v prediction for `x / input_scale[i]` at `timesteps[i]`.
      prev_x0: the previous step's x0 prediction (DPM-Solver's multistep memory; ignored by the others).
      noise: DDIM eta > 0 only: standard normal noise shaped like `x`.

    Returns:
      `(x_next, x0_pred)`.
    """
    c = {k: v[i].astype(x.dtype) for k, v in sampler.coef.items()}
    if sampler.stochastic and noise is None:
        raise ValueError("stochastic DDIM (eta > 0) needs noise")
    return _STEPS[sampler.kind](sampler, c, x, model_out, prev_x0, noise)


def sample(
    sampler: Sampler,
    model_fn: ModelFn,
    noise: jax.Array,
    *,
    rng: jax.Array | None = None,
    clean: jax.Array | None = None,
    mask: jax.Array | None = None,
    return_trajectory: bool = False,
    on_step: Callable[[jax.Array], None] | None = None,
):
    """Runs the whole denoising loop under `lax.scan` (jittable; one model graph for every step).

    Args:
      sampler: tables from `make_sampler`.
      model_fn: `(x_in, t) -> eps or v`, `x_in` in the variance-preserving space, `t` a float32 scalar.
      noise: standard normal initial noise.
      rng: PRNG key for stochastic DDIM.
      clean: try-on: clean latent held outside `mask` at every step.
      mask: try-on: 1 where the sample is generated (broadcastable to `noise`).
      return_trajectory: also return the state after every step, `[S, ...]`.
      on_step: host callback called with the step index after each step (progress bars); None adds nothing.

    Returns:
      The final sample (and the trajectory when asked).
    """
    if sampler.stochastic and rng is None:
        raise ValueError("stochastic DDIM (eta > 0) needs an rng")
    if (clean is None) != (mask is None):
        raise ValueError("try-on sampling needs both `clean` and `mask`")
    dtype = noise.dtype
    x = noise * sampler.init_sigma.astype(dtype)

    def hold(x, scale):
        return x if mask is None else x * mask + clean * scale * (1.0 - mask)

    def body(carry, i):
        x, prev_x0 = carry
        scale = sampler.input_scale[i].astype(dtype)
        x = hold(x, scale)
        out = model_fn(_div(x, scale), sampler.timesteps[i]).astype(dtype)
        step_noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape, dtype) if sampler.stochastic else None
        x, x0 = step(sampler, i, x, out, prev_x0, step_noise)
        if on_step is not None:
            jax.debug.callback(on_step, i, ordered=True)
        return (x, x0), (x if return_trajectory else None)

    (x, _), traj = jax.lax.scan(body, (x, jnp.zeros_like(x)), jnp.arange(sampler.num_steps))
    x = hold(x, jnp.ones((), dtype))
    return (x, traj) if return_trajectory else x
