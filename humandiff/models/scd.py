"""Pure helpers for SCD's two equivalent forms: two-pass (reference cache) and joint single pass.

- `reference_pass`: the reference latent (clean, t=0 by default) through the UNet with `scd_mode="write"`;
  returns the cache (every spatial self-attention's reference K/V, a pytree).
- `target_pass`: target latents with `scd_mode="read"`: target queries attend to `[K_ref ; K_tgt]`. The target
  batch may be a multiple of the cache batch (frames / CFG branches of one reference are contiguous).
- `joint_pass`: `[ref ; tgt]` as one batch with `scd_mode="joint"` (block-causal or full, per the UNet's
  `interaction`), returning both halves; used for training and to test the two-pass form.

Pose: if `pose_encoder` is given, rendered pose images are encoded and added at the UNet's injection point; the
reference pose is added only when `use_ref_pose` (the paper's ablation switch).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def encode_pose(pose_encoder: Any, pose_params: PyTree, pose: jax.Array | None) -> jax.Array | None:
    """Pose images `[N, H, W, 3]` in [0, 1] -> features, or None without an encoder or pose."""
    if pose_encoder is None or pose is None:
        return None
    return pose_encoder.apply({"params": pose_params}, pose)


def _ref_features(pose_encoder, pose_params, ref_pose, use_ref_pose):
    return encode_pose(pose_encoder, pose_params, ref_pose) if use_ref_pose else None


def reference_pass(unet: Any, params: PyTree, z_ref: jax.Array, context: jax.Array, *,
                   t_ref: jax.Array | float = 0.0, ref_pose: jax.Array | None = None, pose_encoder: Any = None,
                   pose_params: PyTree = None, use_ref_pose: bool = True) -> PyTree:
    """Runs the reference pass and returns the K/V cache.

    Args:
      unet: `UNet2DConditionModel`.
      params: its params.
      z_ref: reference latents `[B, h, w, C]` (scaled; clean by default).
      context: cross-attention context `[B, S, D]`.
      t_ref: reference timestep (scalar or `[B]`).
      ref_pose: optional reference pose images `[B, H, W, 3]`.
      pose_encoder, pose_params: optional `PoseEncoder` and its params.
      use_ref_pose: add the reference pose features.

    Returns:
      The cache: the `ref_kv` collection (a pytree of `k`, `v` `[B, L, H, D]` per self-attention).
    """
    feats = _ref_features(pose_encoder, pose_params, ref_pose, use_ref_pose)
    _, state = unet.apply({"params": params}, z_ref, t_ref, context, pose_features=feats, scd_mode="write",
                          mutable=["ref_kv"])
    return state["ref_kv"]


def target_pass(unet: Any, params: PyTree, cache: PyTree, z_tgt: jax.Array, t: jax.Array | float,
                context: jax.Array, *, tgt_pose: jax.Array | None = None, pose_encoder: Any = None,
                pose_params: PyTree = None, ref_keep: jax.Array | None = None, num_frames: int = 1) -> jax.Array:
    """Target pass reading the reference cache; returns the UNet prediction `[Bt, h, w, C]`.

    Args:
      unet, params: the UNet and its params.
      cache: from `reference_pass` (batch `Br`, with `Bt % Br == 0`).
      z_tgt: noisy target latents `[Bt, h, w, C]`.
      t: timestep(s).
      context: `[Bt, S, D]`.
      tgt_pose: optional target pose images `[Bt, H, W, 3]`.
      pose_encoder, pose_params: optional pose encoder.
      ref_keep: optional bool `[Bt]`; False drops the reference for that entry.
      num_frames: frames per video (`Bt = B * num_frames`).
    """
    feats = encode_pose(pose_encoder, pose_params, tgt_pose)
    return unet.apply({"params": params, "ref_kv": cache}, z_tgt, t, context, pose_features=feats,
                      scd_mode="read", ref_keep=ref_keep, num_frames=num_frames)


def joint_pass(unet: Any, params: PyTree, z_ref: jax.Array, z_tgt: jax.Array, t: jax.Array | float,
               context: jax.Array, *, t_ref: jax.Array | float = 0.0, context_ref: jax.Array | None = None,
               ref_pose: jax.Array | None = None, tgt_pose: jax.Array | None = None, pose_encoder: Any = None,
               pose_params: PyTree = None, use_ref_pose: bool = True,
               ref_keep: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Single pass over `[ref ; tgt]` (B pairs); returns `(out_ref, out_tgt)`, each `[B, h, w, C]`.

    Args:
      unet, params: the UNet (its `interaction` picks causal or full) and params.
      z_ref, z_tgt: `[B, h, w, C]` each.
      t: target timestep(s) (scalar or `[B]`); t_ref: reference timestep(s).
      context: target context `[B, S, D]`; context_ref: reference context (default: `context`).
      ref_pose, tgt_pose: optional pose images `[B, H, W, 3]`.
      pose_encoder, pose_params: optional pose encoder.
      use_ref_pose: add the reference pose features.
      ref_keep: optional bool `[B]`.
    """
    b = z_ref.shape[0]
    if z_tgt.shape != z_ref.shape:
        raise ValueError(f"joint pass needs equal ref/target latent shapes, got {z_ref.shape} and {z_tgt.shape}")
    per_entry = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32).reshape(-1), (b,))  # noqa: E731
    timesteps = jnp.concatenate([per_entry(t_ref), per_entry(t)])
    ctx = jnp.concatenate([context if context_ref is None else context_ref, context])
    feats = None
    tgt_feats = encode_pose(pose_encoder, pose_params, tgt_pose)
    if tgt_feats is not None:
        ref_feats = _ref_features(pose_encoder, pose_params, ref_pose, use_ref_pose)
        feats = jnp.concatenate([jnp.zeros_like(tgt_feats) if ref_feats is None else ref_feats, tgt_feats])
    elif use_ref_pose and ref_pose is not None and pose_encoder is not None:
        ref_feats = encode_pose(pose_encoder, pose_params, ref_pose)
        feats = jnp.concatenate([ref_feats, jnp.zeros_like(ref_feats)])
    out = unet.apply({"params": params}, jnp.concatenate([z_ref, z_tgt]), timesteps, ctx, pose_features=feats,
                     scd_mode="joint", ref_keep=ref_keep)
    return out[:b], out[b:]


def empty_cache(cache: PyTree) -> PyTree:
    """A cache with zero reference tokens (the target pass then equals a plain UNet call)."""
    return jax.tree_util.tree_map(lambda x: x[:, :0], cache)
