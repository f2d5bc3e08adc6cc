"""Optimizer, freezing and EMA.

Freezing is data: `config.optim.trainable` and `config.optim.frozen` are regexes over parameter paths
("unet/down_blocks_0/attentions_0/.../kernel"). A leaf is trained when it matches a `trainable` regex and no
`frozen` regex. Every regex must match at least one path, or start-up fails naming it (a typo would otherwise
silently train or freeze the wrong parts).

The parameter tree is split into a trainable tree and a frozen tree (same nesting, each holding only its own
leaves). The optimizer state and the EMA exist for the trainable tree only, so frozen parts cost no optimizer
memory and are never re-saved in checkpoints.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from humandiff.config_lib import ConfigError
from humandiff.training.sharding import path_str


def param_paths(tree: Any) -> list[str]:
    """Every leaf path of a nested-dict tree, "a/b/c"."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


NO_GRADIENT = ("vae", "image_encoder")  # encode under stop_gradient (`scd.Models.encode` / `embed`): never trained


def trainable_mask(tree: Any, trainable: tuple[str, ...], frozen: tuple[str, ...]) -> Any:
    """Bool tree: True where the leaf is trained.

    Raises:
      ConfigError: a regex in `optim.trainable` / `optim.frozen` matches no parameter path, or nothing is trainable.
    """
    paths = param_paths(tree)
    for key, patterns in (("optim.trainable", trainable), ("optim.frozen", frozen)):
        for pattern in patterns:
            if not any(re.search(pattern, p) for p in paths):
                sample = ", ".join(paths[:5])
                raise ConfigError(f"config.{key} regex {pattern!r} matches no parameter path "
                                  f"({len(paths)} paths, e.g. {sample})")

    def one(path, _):
        p = path_str(path)
        return any(re.search(t, p) for t in trainable) and not any(re.search(f, p) for f in frozen)

    mask = jax.tree_util.tree_map_with_path(one, tree)
    if not any(jax.tree_util.tree_leaves(mask)):
        raise ConfigError(f"config.optim.trainable={trainable} with frozen={frozen} leaves nothing to train")
    idle = [p for p, m in zip(paths, jax.tree_util.tree_leaves(mask)) if m and p.split("/")[0] in NO_GRADIENT]
    if idle:
        raise ConfigError(f"config.optim.trainable={trainable} trains {idle[0]} and {len(idle) - 1} more parameters "
                          f"of {sorted({p.split('/')[0] for p in idle})}, which get no gradient (they only encode "
                          "the inputs, under stop_gradient); freeze them: config.optim.frozen=('^vae/', "
                          "'^image_encoder/')")
    _same_training(paths, jax.tree_util.tree_leaves(mask), trainable, frozen)
    return mask


def _same_training(paths: list[str], trained: list[bool], trainable: tuple[str, ...], frozen: tuple[str, ...]) -> None:
    """A separate reference UNet (`reference_unet/`) trains exactly where the UNet's spatial layers train, so the
    ablation compares networks, not training recipes (e.g. `^unet/` alone would leave the reference UNet frozen)."""
    if not any(p.startswith("reference_unet/") for p in paths):
        return
    on = lambda prefix: {p[len(prefix):] for p, t in zip(paths, trained)  # noqa: E731
                         if t and p.startswith(prefix) and "/motion_modules_" not in p}
    differ = sorted(on("unet/") ^ on("reference_unet/"))
    if differ:
        raise ConfigError(f"config.optim.trainable={trainable} with frozen={frozen} trains {differ[0]} (and "
                          f"{len(differ) - 1} more) in only one of unet/ and reference_unet/: with "
                          "model.reference_net='separate' both UNets train alike; e.g. trainable=('^(unet|"
                          "reference_unet|pose_encoder)/',)")


def split(tree: Mapping, mask: Mapping) -> tuple[dict, dict]:
    """Splits a nested dict into (leaves where mask is True, the rest); empty sub-dicts are dropped."""
    keep, rest = {}, {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            a, b = split(value, mask[key])
            if a:
                keep[key] = a
            if b:
                rest[key] = b
        elif mask[key]:
            keep[key] = value
        else:
            rest[key] = value
    return keep, rest


def merge(a: Mapping, b: Mapping) -> dict:
    """Inverse of `split`: the union of two nested dicts with disjoint leaves."""
    out = dict(a)
    for key, value in b.items():
        if key in out:
            if not (isinstance(value, Mapping) and isinstance(out[key], Mapping)):
                raise ValueError(f"parameter {key!r} is in both the trainable and the frozen tree")
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def learning_rate(config) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr` over `optim.warmup_steps`, then `optim.schedule`.

    `constant` holds the peak; `cosine` decays it to 0 at `total_steps`; `wsd` (warmup-stable-decay) holds the
    peak, then decays it linearly to 0 over the last `optim.decay_steps` steps before `total_steps` (all the steps
    after the warmup, if fewer: a shortened smoke run still ends at 0).
    """
    c = config.optim
    total = int(config.total_steps)
    if c.schedule == "cosine":
        after = optax.cosine_decay_schedule(c.lr, max(total - c.warmup_steps, 1))
    elif c.schedule == "wsd":  # a decay longer than the steps after the warmup is shortened to them
        decay = max(min(int(c.decay_steps), total - c.warmup_steps), 1)
        after = optax.join_schedules([optax.constant_schedule(c.lr), optax.linear_schedule(c.lr, 0.0, decay)],
                                     [max(total - c.warmup_steps - decay, 0)])
    else:
        after = optax.constant_schedule(c.lr)
    if c.warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, c.lr, c.warmup_steps), after], [c.warmup_steps])


class AdamWState(NamedTuple):
    """`count`: updates applied so far (int32; it drives the schedule and the bias correction); `mu`, `nu`: the
    first and second moments, float32 trees shaped like the trainable parameters."""
    count: jax.Array
    mu: Any
    nu: Any


@dataclasses.dataclass(frozen=True)
class AdamW:
    """AdamW with global-norm clipping and a learning-rate schedule, whose update can be skipped.

    The arithmetic of `optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(lr, b1, b2, eps,
    weight_decay=...))`, bit for bit unless a gradient is clipped (tests compare the two), written out so that the
    skip gate sits on the new moments *before* the parameter update reads them. With optax the gate can only select
    between its outputs and the old state, and XLA recomputes the new moments inside each fusion that needs them
    (XLA:CPU has no multi-output fusion): the old parameters and moments are then read after their donated buffers
    were overwritten in place, so copy insertion keeps a float32 copy of each, three parameter-sized trees
    (10.3 GB for SD-1.5). Gated first, each old buffer is read only by the fusion that rewrites it, and later
    fusions read the gated results.
    """
    lr: optax.Schedule
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-4
    grad_clip: float = 0.0

    def init(self, params: Any) -> AdamWState:
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return AdamWState(count=jnp.zeros((), jnp.int32), mu=zeros(), nu=zeros())

    def update(self, grads: Any, state: AdamWState, params: Any, grad_norm: jax.Array,
               apply: jax.Array) -> tuple[Any, AdamWState]:
        """`(new params, new state)`; where `apply` is False both are returned unchanged.

        Args:
          grads: gradients shaped like `params`.
          state: the optimizer state of `params`.
          params: the trainable parameters (float32).
          grad_norm: the global L2 norm of `grads` (from `norm_and_finite`), used for the clipping.
          apply: bool scalar; False skips the update (a non-finite loss or gradient).
        """
        if self.grad_clip > 0:
            # One scalar factor rather than optax's `(g / norm) * clip`: a division counts as expensive, so XLA
            # would materialise the clipped gradients (another parameter-sized tree) instead of recomputing them
            # inside the two moment updates. 1.0 exactly below the threshold; within an ulp of optax above it.
            scale = jnp.where(grad_norm < self.grad_clip, 1.0, self.grad_clip / grad_norm)
            grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        gate = lambda new, old: jnp.where(apply, new, old)  # noqa: E731
        b1, b2 = self.b1, self.b2
        mu = jax.tree.map(lambda g, m: gate((1 - b1) * g + b1 * m, m), grads, state.mu)
        nu = jax.tree.map(lambda g, v: gate((1 - b2) * g ** 2 + b2 * v, v), grads, state.nu)
        count = optax.safe_increment(state.count)
        mu_scale, nu_scale = 1 - b1 ** count, 1 - b2 ** count
        step_size = -self.lr(state.count)

        def param(p, m, v):
            direction = (m / mu_scale.astype(m.dtype)) / (jnp.sqrt(v / nu_scale.astype(v.dtype)) + self.eps)
            direction = direction + self.weight_decay * p
            return gate((p + jnp.asarray(step_size, p.dtype) * direction).astype(p.dtype), p)

        new_params = jax.tree.map(param, params, mu, nu)
        return new_params, AdamWState(count=gate(count, state.count), mu=mu, nu=nu)


def make_optimizer(config) -> AdamW:
    """AdamW over the trainable tree, from `config.optim` (lr schedule, betas, eps, weight decay, grad_clip)."""
    c = config.optim
    return AdamW(learning_rate(config), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                 grad_clip=c.grad_clip)


def ema_update(ema: Any, params: Any, decay: float, apply: jax.Array | bool = True) -> Any:
    """`ema <- decay * ema + (1 - decay) * params` in the EMA's dtype (float32); unchanged where `apply` is False."""
    def one(e, p):
        new = (decay * e + (1.0 - decay) * p.astype(e.dtype)).astype(e.dtype)
        return new if apply is True else jnp.where(apply, new, e)
    return jax.tree.map(one, ema, params)


def norm_and_finite(tree: Any) -> tuple[jax.Array, jax.Array]:
    """`(norm, finite)`: the global L2 norm of `tree` and whether it is finite.

    The norm is finite exactly when every element is finite and the sum of squares does not overflow (a norm past
    ~1.8e19 in float32, which is no usable gradient either). One scalar is what gates the update: a flag stacked from
    a per-leaf `isfinite` reduction gets fused by XLA:CPU into every select it gates, so the compiled step grows with
    the square of the leaf count (SD-1.5's UNet, 686 leaves, with AdamW at an 8x8 latent: stopped past 6 GB of
    compile memory; gated on the norm it compiles in 30 s and 1.7 GB).
    """
    norm = optax.tree.norm(tree)
    return norm, jnp.isfinite(norm)
