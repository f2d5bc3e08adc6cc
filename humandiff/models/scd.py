"""The SCD model bundle and its two forms: the only reference-pass / target-pass / joint-pass code.

Training (`humandiff.training.step`), sampling (`humandiff.diffusion.pipeline`) and the trainer's evaluations all
call these functions; the tests that prove the two forms equal call them too.

- `Models`: the Linen modules of one SCD model (UNet, pose encoder, optional VAE and image encoder) with
  `encode` / `decode` (VAE or pixel space), `embed` (image embedding or a zero context token) and `pose`.
- `reference_pass`: the reference latent through the UNet with `scd_mode="write"`; returns the cache (every
  spatial self-attention's reference K/V, a pytree).
- `target_pass`: target latents with `scd_mode="read"`: target queries attend to `[K_ref ; K_tgt]`. The target
  batch may be a multiple of the cache batch (frames / CFG branches of one reference are contiguous).
- `joint_pass`: `[ref ; tgt]` as one batch with `scd_mode="joint"` (block-causal or full attention, per the UNet's
  `interaction`), returning both halves.

With `model.reference_net="separate"` (the ReferenceNet ablation) the reference pass runs its own copy of the UNet,
`params["reference_unet"]` (`reference_params` picks it); the joint form then runs the two UNets side by side as
two "streams" of one `jax.vmap` whose self-attentions gather each other's tokens, so it still equals the two-pass
form.

Under `interaction="causal"` the two forms are equal (outputs and gradients). Under `"full"` the reference sees the
target, so no cache can stand for it: `reference_pass` refuses such a UNet and only the joint form runs.

Pose features (the pose encoder's output) are added at the UNet's injection point; the caller decides whether the
reference pass gets the reference pose's features (`model.use_ref_pose`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from humandiff.models.attention import STREAM_AXIS  # joint_pass's vmap axis with a separate reference UNet

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static argument of jitted functions
class Models:
    """The Linen modules of an SCD model. `pose_encoder`, `vae` and `image_encoder` may be None.

    Parameters live in one dict `{"unet", "pose_encoder", "vae"?, "image_encoder"?}`; every method takes it.
    """

    unet: nn.Module
    pose_encoder: nn.Module | None = None
    vae: nn.Module | None = None
    image_encoder: nn.Module | None = None

    @property
    def context_dim(self) -> int:
        """Width of the cross-attention context (the UNet's `cross_attention_dim`)."""
        return int(self.unet.cross_attention_dim)

    @property
    def latent_channels(self) -> int:
        """Channels the UNet denoises (the VAE's latent channels, or 3 in pixel space)."""
        return int(self.unet.in_channels)

    @property
    def downscale(self) -> int:
        """Pixels per latent cell along each side (1 in pixel space)."""
        return 1 if self.vae is None else 2 ** (len(self.vae.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """The VAE's latent scale (1 in pixel space)."""
        return 1.0 if self.vae is None else float(self.vae.scaling_factor)

    def _shift(self) -> float:
        return float(getattr(self.vae, "shift_factor", None) or 0.0)

    def encode(self, params: PyTree, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Images `[N, H, W, 3]` in [-1, 1] -> scaled latents (the images themselves without a VAE).

        With `rng`, a sample of the VAE posterior (training: each step sees another latent of the same image, as in
        Stable Diffusion fine-tuning); without it, the posterior mean (sampling: the reference and try-on latents are
        deterministic). No gradient flows into the VAE.
        """
        if self.vae is None:
            return images
        mean, logvar = self.vae.apply({"params": params["vae"]}, images, method=self.vae.encode)
        z = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        return jax.lax.stop_gradient((z - self._shift()) * self.scaling_factor)

    def decode(self, params: PyTree, z: jax.Array, chunk: int) -> jax.Array:
        """Scaled latents `[N, h, w, C]` -> images `[N, H, W, 3]` clipped to [-1, 1], `chunk` entries per VAE call."""
        if self.vae is None:
            return jnp.clip(z, -1.0, 1.0)
        z = z / self.scaling_factor + self._shift()
        n = z.shape[0]
        chunk = min(chunk, n)
        pad = (-n) % chunk
        zp = jnp.concatenate([z, jnp.zeros((pad,) + z.shape[1:], z.dtype)]) if pad else z
        zp = zp.reshape((-1, chunk) + z.shape[1:])
        images = jax.lax.map(lambda c: self.vae.apply({"params": params["vae"]}, c, method=self.vae.decode), zp)
        images = images.reshape((-1,) + images.shape[2:])[:n]
        return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)

    def clip_input(self, references: Any) -> Any:
        """The image encoder's input for uint8 references `[B, H, W, 3]` (CLIP-preprocessed at the encoder's size),
        or None for a model without one. Sampling and the trainer's evaluations both prepare it here."""
        if self.image_encoder is None:
            return None
        from humandiff.models.clip_preprocess import preprocess  # noqa: PLC0415

        return preprocess(references, size=self.image_encoder.config.image_size)

    def embed(self, params: PyTree, clip_image: jax.Array | None, batch: int) -> jax.Array:
        """`[B, 1, D]` float32 context: the image embedding of `clip_image` `[B, S, S, 3]` (CLIP-normalised), or a
        zero token when the model has no image encoder. No gradient flows into the encoder."""
        if self.image_encoder is None:
            return jnp.zeros((batch, 1, self.context_dim), jnp.float32)
        if clip_image is None:
            raise ValueError("the model has an image encoder: its inputs need 'clip_image' (the reference, "
                             "CLIP-preprocessed)")
        emb = self.image_encoder.apply({"params": params["image_encoder"]}, clip_image).image_embeds
        return jax.lax.stop_gradient(emb.astype(jnp.float32)).reshape(batch, 1, -1)

    def pose(self, params: PyTree, poses: jax.Array | None) -> jax.Array | None:
        """Pose images `[N, H, W, 3]` in [0, 1] -> features at latent resolution (None without poses or encoder)."""
        if poses is None or self.pose_encoder is None:
            return None
        return self.pose_encoder.apply({"params": params["pose_encoder"]}, poses)


def reference_params(params: PyTree) -> PyTree:
    """The UNet parameters of the reference pass: `params["reference_unet"]` when the model has its own reference
    UNet (`model.reference_net="separate"`), else the shared `params["unet"]`."""
    return params["reference_unet"] if "reference_unet" in params else params["unet"]


def reference_pass(unet: Any, params: PyTree, z_ref: jax.Array, context: jax.Array, *,
                   t_ref: jax.Array | float = 0.0, pose_features: jax.Array | None = None) -> PyTree:
    """Runs the reference pass and returns the K/V cache.

    Args:
      unet: `UNet2DConditionModel` (or a module with its SCD surface) with causal interaction.
      params: its params.
      z_ref: reference latents `[B, h, w, C]` (scaled; clean at `t_ref=0`).
      context: cross-attention context `[B, S, D]`.
      t_ref: reference timestep (scalar or `[B]`).
      pose_features: optional reference pose features `[B, h', w', Cp]`.

    Returns:
      The cache: the `ref_kv` collection (a pytree of `k`, `v` `[B, L, H, D]` per self-attention).

    Raises:
      ValueError: the UNet has `interaction="full"` (its reference sees the target: use `joint_pass`).
    """
    if getattr(unet, "interaction", "causal") != "causal":
        raise ValueError(f"interaction={unet.interaction!r}: the reference sees the target, so its K/V cannot be "
                         "computed once and cached; use the joint form (train.form='joint', sampling mode='joint')")
    _, state = unet.apply({"params": params}, z_ref, t_ref, context, pose_features=pose_features, scd_mode="write",
                          mutable=["ref_kv"])
    return state["ref_kv"]


def target_pass(unet: Any, params: PyTree, cache: PyTree, z_tgt: jax.Array, t: jax.Array | float,
                context: jax.Array, *, pose_features: jax.Array | None = None, ref_keep: jax.Array | None = None,
                num_frames: int = 1) -> jax.Array:
    """Target pass reading the reference cache; returns the UNet prediction `[Bt, h, w, C]`.

    Args:
      unet, params: the UNet and its params.
      cache: from `reference_pass` (batch `Br`, with `Bt % Br == 0`; consecutive target entries share a reference).
      z_tgt: noisy target latents `[Bt, h, w, C]`.
      t: timestep(s).
      context: `[Bt, S, D]`.
      pose_features: optional target pose features `[Bt, h', w', Cp]`.
      ref_keep: optional bool `[Bt]`; False hides the reference from that entry.
      num_frames: frames per video (`Bt = B * num_frames`) for the temporal layers.
    """
    return unet.apply({"params": params, "ref_kv": cache}, z_tgt, t, context, pose_features=pose_features,
                      scd_mode="read", ref_keep=ref_keep, num_frames=num_frames)


def joint_pass(unet: Any, params: PyTree, z_ref: jax.Array, z_tgt: jax.Array, t: jax.Array | float,
               context: jax.Array, *, t_ref: jax.Array | float = 0.0, context_ref: jax.Array | None = None,
               ref_pose_features: jax.Array | None = None, pose_features: jax.Array | None = None,
               ref_keep: jax.Array | None = None,
               ref_params: PyTree | None = None) -> tuple[jax.Array, jax.Array]:
    """Single pass over `[ref ; tgt]` (B pairs); returns `(out_ref, out_tgt)`, each `[B, h, w, C]`.

    Args:
      unet, params: the UNet (its `interaction` picks block-causal or full attention) and params.
      ref_params: the reference half's own UNet parameters (a separate reference UNet), or None (shared).
      z_ref, z_tgt: `[B, h, w, C]` each.
      t: target timestep(s) (scalar or `[B]`); t_ref: reference timestep(s).
      context: target context `[B, S, D]`; context_ref: reference context (default: `context`).
      ref_pose_features, pose_features: optional pose features of the reference and of the target; when only one
        is given, the other half gets zeros (the same as adding nothing).
      ref_keep: optional bool `[B]`.
    """
    b = z_ref.shape[0]
    if z_tgt.shape != z_ref.shape:
        raise ValueError(f"joint pass needs equal ref/target latent shapes, got {z_ref.shape} and {z_tgt.shape}")
    per_entry = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32).reshape(-1), (b,))  # noqa: E731
    timesteps = jnp.concatenate([per_entry(t_ref), per_entry(t)])
    ctx = jnp.concatenate([context if context_ref is None else context_ref, context])
    feats = None
    if ref_pose_features is not None or pose_features is not None:
        like = pose_features if pose_features is not None else ref_pose_features
        zero = lambda f: jnp.zeros_like(like) if f is None else f  # noqa: E731
        feats = jnp.concatenate([zero(ref_pose_features), zero(pose_features)])
    if ref_params is not None:  # two UNets in step: stream 0 the reference, stream 1 the target
        halves = lambda x: None if x is None else x.reshape((2, b) + x.shape[1:])  # noqa: E731
        both = jax.tree.map(lambda r, p: jnp.stack([r, p]), _fill(ref_params, params), params)
        one = lambda p, z, tt, c, f: unet.apply({"params": p}, z, tt, c, pose_features=f,  # noqa: E731
                                                scd_mode="streams", ref_keep=ref_keep)
        out = jax.vmap(one, axis_name=STREAM_AXIS)(both, jnp.stack([z_ref, z_tgt]), halves(timesteps), halves(ctx),
                                                   halves(feats))
        return out[0], out[1]
    out = unet.apply({"params": params}, jnp.concatenate([z_ref, z_tgt]), timesteps, ctx, pose_features=feats,
                     scd_mode="joint", ref_keep=ref_keep)
    return out[:b], out[b:]


def _fill(tree: PyTree, like: PyTree) -> PyTree:
    """`tree` with the entries it lacks taken from `like` (a reference UNet has no motion modules; its stream runs
    none, so they only fill the stacked tree)."""
    if not isinstance(like, Mapping):
        return tree
    return {k: _fill(tree[k], v) if k in tree else v for k, v in like.items()}


def empty_cache(cache: PyTree) -> PyTree:
    """A cache with zero reference tokens (the target pass then equals a plain UNet call)."""
    return jax.tree_util.tree_map(lambda x: x[:, :0], cache)
