"""The SCD sampler as one jitted pure function: reference pass once, cached target denoising with CFG, decode.

    generate = make_generator(models, SamplingConfig(...))
    frames = generate(params, sampler, inputs, rng, guidance)      # [B, F, H, W, 3] in [-1, 1]

- The reference image is encoded (`Models.encode`: the VAE posterior mean, else pixel space) and embedded (CLIP
  image encoder when present, else a zero 1-token context), and the UNet runs on it ONCE (`scd.reference_pass`,
  timestep `ref_timestep`; a model with a separate reference UNet runs that one) to fill the reference K/V cache.
- Every denoising step and every frame/window reads that cache (`scd.target_pass`). The target batch is laid out
  `[B, branch, frames]` so that entry i reads cache entry i // m (the attention broadcasts, no copy).
- Classifier-free guidance: the unconditional branch drops what `SamplingConfig.uncond_*` says (reference K/V via
  `ref_keep`, image embedding -> zeros, target pose -> zero features). `guidance` is a traced scalar, so a new
  value never recompiles.
- Video: frames go through the model `window` at a time (`num_frames=window`); longer videos use overlapping
  windows whose outputs are fused per step with uniform or tent weights. The VAE decodes `decode_chunk` frames at a
  time (`lax.map`) to bound memory.
- Try-on: `inputs["tryon_person"]` / `inputs["tryon_mask"]` hold the latent outside the mask at its clean value
  at every step (SCD's masked forward process).
- `SamplingConfig.mode="joint"` is the recompute-every-step oracle: a joint `[ref ; tgt]` pass per step
  (`scd.joint_pass`), needed for `interaction="full"`, and equal to the cached form under causal interaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from humandiff.diffusion import samplers
from humandiff.diffusion.schedules import latent_mask
from humandiff.models import scd
from humandiff.models.scd import Models

FUSIONS = ("uniform", "tent")
MODES = ("cached", "joint")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling options (changing one recompiles; `guidance` is not among them).

    Attributes:
      ref_timestep: timestep of the reference pass (0: the clean reference latent; > 0: noised to it, as in training).
      cfg: run the unconditional branch (False: conditional only, `guidance` ignored).
      uncond_drop_ref: the unconditional branch does not see the reference K/V.
      uncond_drop_embed: the unconditional branch gets a zero image embedding.
      uncond_drop_pose: the unconditional branch gets zero target-pose features.
      use_ref_pose: add the reference pose's features in the reference pass.
      window: frames per model call (temporal window); videos longer than this use overlapping windows.
      overlap: frames shared by consecutive windows.
      fusion: "uniform" or "tent" weights for fusing overlapping windows.
      decode_chunk: frames per VAE decode call.
      mode: "cached" (two-stage) or "joint" (recompute the reference every step; oracle / full interaction).
    """

    ref_timestep: int = 0
    cfg: bool = True
    uncond_drop_ref: bool = True
    uncond_drop_embed: bool = True
    uncond_drop_pose: bool = False
    use_ref_pose: bool = True
    window: int = 16
    overlap: int = 4
    fusion: str = "uniform"
    decode_chunk: int = 8
    mode: str = "cached"

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r}; expected one of {FUSIONS}")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; expected one of {MODES}")
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"need window >= 1 and 0 <= overlap < window; got window={self.window}, "
                             f"overlap={self.overlap}")
        if self.decode_chunk < 1:
            raise ValueError(f"decode_chunk={self.decode_chunk} must be >= 1")

    @property
    def branches(self) -> int:
        return 2 if self.cfg else 1


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """Start frames of the overlapping windows covering `num_frames` (the last one aligned to the end)."""
    if num_frames <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def fusion_weights(window: int, kind: str) -> np.ndarray:
    """Per-frame weights of one window: ones ("uniform") or a tent peaking mid-window ("tent"), all > 0."""
    if kind == "uniform":
        return np.ones(window, np.float32)
    j = np.arange(window)
    return (np.minimum(j + 1, window - j) / ((window + 1) // 2)).astype(np.float32)


@dataclasses.dataclass
class Condition:
    """Everything the target pass needs besides the latent (built once, outside the denoising loop)."""

    z_ref: jax.Array  # [B, h, w, C]
    ref_pose: jax.Array | None  # [B, h, w, Cp] pose features of the reference
    embed: jax.Array  # [B, 1, D]
    tgt_pose: jax.Array | None  # [B, F, h, w, Cp]
    cache: Any = None  # ref_kv collection, batch B * ref_branches


def _ref_branches(cfg: SamplingConfig) -> int:
    """Cache entries per reference: 2 when the unconditional branch sees the reference with another context."""
    return 2 if cfg.cfg and cfg.uncond_drop_embed and not cfg.uncond_drop_ref else 1


def _branch_embed(cfg: SamplingConfig, embed: jax.Array) -> jax.Array:
    """`[B, nb, 1, D]`: the conditional embedding, then the unconditional one."""
    if not cfg.cfg:
        return embed[:, None]
    uncond = jnp.zeros_like(embed) if cfg.uncond_drop_embed else embed
    return jnp.stack([embed, uncond], axis=1)


def _reference_cache(models: Models, params: dict, cfg: SamplingConfig, cond: Condition) -> Any:
    """The reference pass, once per sample (`scd.reference_pass`); batch `B * _ref_branches(cfg)`, branch-minor."""
    b = cond.z_ref.shape[0]
    nr = _ref_branches(cfg)
    rep = lambda x: None if x is None else jnp.repeat(x, nr, axis=0)  # noqa: E731  [B * nr], branch-minor
    ctx = _branch_embed(cfg, cond.embed)[:, :nr].reshape(b * nr, 1, -1)
    t_ref = jnp.full((b * nr,), cfg.ref_timestep, jnp.float32)
    return scd.reference_pass(models.unet, scd.reference_params(params), rep(cond.z_ref), ctx, t_ref=t_ref,
                              pose_features=rep(cond.ref_pose))


def _target_inputs(cfg: SamplingConfig, cond: Condition, start: int, width: int):
    """Per-entry context, pose features and ref_keep for a window, layout `[B, nb, width]` flattened."""
    b, nb = cond.z_ref.shape[0], cfg.branches
    n = b * nb * width
    ctx = jnp.broadcast_to(_branch_embed(cfg, cond.embed)[:, :, None], (b, nb, width) + cond.embed.shape[1:])
    keep = np.ones((nb,), bool)
    if cfg.cfg and cfg.uncond_drop_ref:
        keep[1] = False
    ref_keep = jnp.asarray(np.broadcast_to(keep[None, :, None], (b, nb, width)).reshape(n))
    pose = None
    if cond.tgt_pose is not None:
        p = jax.lax.dynamic_slice_in_dim(cond.tgt_pose, start, width, axis=1)[:, None]  # [B, 1, W, ...]
        p = jnp.broadcast_to(p, (b, nb) + p.shape[2:])
        if cfg.cfg and cfg.uncond_drop_pose:
            p = p * jnp.asarray([1.0, 0.0], p.dtype).reshape((1, 2) + (1,) * (p.ndim - 2))
        pose = p.reshape((n,) + p.shape[3:])
    return ctx.reshape((n,) + ctx.shape[3:]), pose, ref_keep


def _keep_or_none(cfg: SamplingConfig, keep: jax.Array) -> jax.Array | None:
    return keep if cfg.cfg and cfg.uncond_drop_ref else None


def _joint_call(models: Models, params: dict, cfg: SamplingConfig, cond: Condition, x, tt, ctx, pose, keep, width):
    """Recompute form: one `[ref ; tgt]` joint pass; each target entry gets its own copy of the reference."""
    b, nb = cond.z_ref.shape[0], cfg.branches
    per = nb * width  # target entries per reference
    nr = _ref_branches(cfg)
    rep = lambda a: jnp.repeat(a, per, axis=0)  # noqa: E731
    branch = _branch_embed(cfg, cond.embed)  # [B, nb, 1, D]
    if nr == 1:  # the cached form builds one cache, with the conditional context, for both branches
        branch = jnp.broadcast_to(branch[:, :1], branch.shape)
    ref_ctx = jnp.broadcast_to(branch[:, :, None], (b, nb, width) + branch.shape[2:]).reshape(ctx.shape)
    if width > 1 and getattr(models.unet, "motion_modules", False):
        raise ValueError("mode='joint' pairs one reference copy with one target frame and cannot run temporal "
                         f"(motion) layers over {width} frames; use mode='cached'")
    # Without temporal layers frames are independent batch entries, so the joint pass takes them as num_frames=1.
    ref_pose = None if cond.ref_pose is None else rep(cond.ref_pose)
    _, out = scd.joint_pass(models.unet, params["unet"], rep(cond.z_ref), x, tt, ctx, t_ref=cfg.ref_timestep,
                            context_ref=ref_ctx, ref_pose_features=ref_pose, pose_features=pose,
                            ref_keep=_keep_or_none(cfg, keep), ref_params=params.get("reference_unet"))
    return out


def window_prediction(models: Models, params: dict, cfg: SamplingConfig, cond: Condition, x_w: jax.Array,
                      t: jax.Array, start: jax.Array | int, guidance: jax.Array) -> jax.Array:
    """Guided model output for one window of frames `x_w` `[B, W, h, w, C]` starting at frame `start`."""
    b, width = x_w.shape[:2]
    nb = cfg.branches
    n = b * nb * width
    x = jnp.broadcast_to(x_w[:, None], (b, nb) + x_w.shape[1:]).reshape((n,) + x_w.shape[2:])
    ctx, pose, keep = _target_inputs(cfg, cond, start, width)
    tt = jnp.full((n,), t, jnp.float32)
    if cfg.mode == "cached":
        out = scd.target_pass(models.unet, params["unet"], cond.cache, x, tt, ctx, pose_features=pose,
                              ref_keep=_keep_or_none(cfg, keep), num_frames=width)
    else:
        out = _joint_call(models, params, cfg, cond, x, tt, ctx, pose, keep, width)
    out = out.astype(jnp.float32).reshape((b, nb) + x_w.shape[1:])
    if nb == 1:
        return out[:, 0]
    cond_out, uncond_out = out[:, 0], out[:, 1]
    return uncond_out + guidance * (cond_out - uncond_out)


def video_prediction(models: Models, params: dict, cfg: SamplingConfig, cond: Condition, x: jax.Array,
                     t: jax.Array, guidance: jax.Array) -> jax.Array:
    """Guided model output for a whole video `x` `[B, F, h, w, C]`: one window, or fused overlapping windows."""
    frames = x.shape[1]
    starts = window_starts(frames, cfg.window, cfg.overlap)
    if len(starts) == 1:
        return window_prediction(models, params, cfg, cond, x, t, 0, guidance)
    width = cfg.window
    w = jnp.asarray(fusion_weights(width, cfg.fusion)).reshape(1, width, 1, 1, 1)

    def body(carry, start):
        acc, wsum = carry
        x_w = jax.lax.dynamic_slice_in_dim(x, start, width, axis=1)
        out = window_prediction(models, params, cfg, cond, x_w, t, start, guidance) * w
        acc = jax.lax.dynamic_update_slice_in_dim(
            acc, jax.lax.dynamic_slice_in_dim(acc, start, width, axis=1) + out, start, axis=1)
        wsum = jax.lax.dynamic_update_slice_in_dim(
            wsum, jax.lax.dynamic_slice_in_dim(wsum, start, width, axis=1) + w, start, axis=1)
        return (acc, wsum), None

    init = (jnp.zeros(x.shape, jnp.float32), jnp.zeros((1, frames, 1, 1, 1), jnp.float32))
    (acc, wsum), _ = jax.lax.scan(body, init, jnp.asarray(starts, jnp.int32))
    return acc / wsum


def _frames_of(inputs: dict) -> int:
    return int(inputs["poses"].shape[1]) if inputs.get("poses") is not None else 1


def check_inputs(models: Models, cfg: SamplingConfig, inputs: dict) -> None:
    """Raises one clear ValueError for inputs the sampler cannot use (before anything compiles)."""
    if "ref_image" not in inputs:
        raise ValueError("inputs need 'ref_image' [B, H, W, 3] in [-1, 1]")
    ref = inputs["ref_image"]
    if ref.ndim != 4 or ref.shape[-1] != 3:
        raise ValueError(f"ref_image must be [B, H, W, 3]; got shape {tuple(ref.shape)}")
    b, h, w, _ = ref.shape
    if models.vae is not None and (h % 8 or w % 8):
        raise ValueError(f"reference size {h}x{w} must be divisible by 8 (the VAE downsamples by 8)")
    expect = {"poses": (b, None, h, w, 3), "ref_pose": (b, h, w, 3), "tryon_person": (b, h, w, 3),
              "tryon_mask": (b, h, w, 1)}
    for key, shape in expect.items():
        if inputs.get(key) is None:
            continue
        got = tuple(inputs[key].shape)
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            raise ValueError(f"inputs[{key!r}] has shape {got}; expected {shape} (None: any)")
    if ("tryon_person" in inputs) != ("tryon_mask" in inputs):
        raise ValueError("try-on needs both 'tryon_person' and 'tryon_mask'")
    if "tryon_person" in inputs and _frames_of(inputs) != 1:
        raise ValueError("try-on samples images: poses must have one frame")
    if models.pose_encoder is None and inputs.get("poses") is not None:
        raise ValueError("inputs have 'poses' but the model has no pose encoder")


def prepare_condition(models: Models, cfg: SamplingConfig, params: dict, inputs: dict,
                      sampler: samplers.Sampler | None = None, rng: jax.Array | None = None) -> Condition:
    """Everything computed once per sample: reference latent, embedding, pose features, and (cached mode) the
    reference pass's K/V cache.

    With `cfg.ref_timestep > 0` the reference latent is noised to that timestep (`q_sample` with noise from `rng`
    and the schedule in `sampler`), as in training; at the default 0 it is the clean latent.
    """
    ref = inputs["ref_image"]
    b, frames = ref.shape[0], _frames_of(inputs)
    poses = inputs.get("poses")
    tgt_pose = None
    if poses is not None:
        feats = models.pose(params, poses.reshape((b * frames,) + poses.shape[2:]))
        tgt_pose = feats.reshape((b, frames) + feats.shape[1:])
    ref_pose = models.pose(params, inputs.get("ref_pose")) if cfg.use_ref_pose else None
    z_ref = models.encode(params, ref)  # the posterior mean: a deterministic reference latent
    if cfg.ref_timestep > 0:
        if sampler is None or rng is None:
            raise ValueError(f"ref_timestep={cfg.ref_timestep} needs the sampler (schedule) and an rng")
        acp = sampler.alphas_cumprod[cfg.ref_timestep]
        z_ref = jnp.sqrt(acp) * z_ref + jnp.sqrt(1.0 - acp) * jax.random.normal(rng, z_ref.shape, z_ref.dtype)
    cond = Condition(z_ref=z_ref, ref_pose=ref_pose, embed=models.embed(params, inputs.get("clip_image"), b),
                     tgt_pose=tgt_pose)
    if cfg.mode == "cached":
        cond.cache = _reference_cache(models, params, cfg, cond)
    return cond


def generate(models: Models, cfg: SamplingConfig, params: dict, sampler: samplers.Sampler, inputs: dict,
             rng: jax.Array, guidance: jax.Array, on_step: Callable | None = None) -> jax.Array:
    """Samples `[B, F, H, W, 3]` images in [-1, 1] (pure; jit it with `make_generator`).

    Args:
      models: the modules.
      cfg: static sampling options.
      params: `{"unet", "pose_encoder", "vae", "image_encoder"}` parameter trees (absent models: omit).
      sampler: step tables (`samplers.make_sampler`).
      inputs: `ref_image [B,H,W,3]` in [-1,1]; optional `ref_pose [B,H,W,3]`, `poses [B,F,H,W,3]` in [0,1],
        `clip_image [B,224,224,3]` (CLIP-normalised), `tryon_person [B,H,W,3]` + `tryon_mask [B,H,W,1]`.
      rng: PRNG key (initial noise and stochastic DDIM).
      guidance: CFG scale (traced).
      on_step: optional host callback per denoising step (progress).

    Returns:
      Decoded frames `[B, F, H, W, 3]`.
    """
    k_noise, k_step, k_ref = jax.random.split(rng, 3)
    cond = prepare_condition(models, cfg, params, inputs, sampler, k_ref)
    z_ref = cond.z_ref
    b, frames = z_ref.shape[0], _frames_of(inputs)
    shape = (b, frames) + z_ref.shape[1:]
    noise = jax.random.normal(k_noise, shape, jnp.float32)
    clean = mask = None
    if inputs.get("tryon_person") is not None:
        clean = models.encode(params, inputs["tryon_person"])[:, None]
        mask = latent_mask(inputs["tryon_mask"], z_ref.shape[1:3])[:, None]
    guidance = jnp.asarray(guidance, jnp.float32)
    model_fn = lambda x, t: video_prediction(models, params, cfg, cond, x, t, guidance)  # noqa: E731
    z = samplers.sample(sampler, model_fn, noise, rng=k_step, clean=clean, mask=mask, on_step=on_step)
    images = models.decode(params, z.reshape((b * frames,) + z.shape[2:]), cfg.decode_chunk)
    return images.reshape((b, frames) + images.shape[1:])


def make_generator(models: Models, cfg: SamplingConfig, on_step: Callable | None = None, *,
                   mesh: jax.sharding.Mesh | None = None, batch_axis: str = "data") -> Callable[..., jax.Array]:
    """`fn(params, sampler, inputs, rng, guidance) -> frames`, jitted once per input shapes and sampler kind.

    Changing `guidance`, the seed, the parameters or the sampler's tables (same kind and step count) reuses the
    compiled program. Inputs are validated (`check_inputs`) on every call before dispatch.
    `fn.compile_ahead(params, sampler, inputs, rng, guidance)` compiles without running and returns `run()`.

    Args:
      models: the modules.
      cfg: static sampling options.
      on_step: optional host callback per denoising step.
      mesh: optional device mesh: the references (batch axis of every input) are split over `batch_axis` and
        the parameters replicated; each device then samples its own references (windows included).
      batch_axis: mesh axis for the batch.
    """
    jitted = jax.jit(lambda params, sampler, inputs, rng, guidance: generate(
        models, cfg, params, sampler, inputs, rng, guidance, on_step))

    def arguments(params, sampler, inputs, rng, guidance):
        check_inputs(models, cfg, inputs)
        if not 0 <= cfg.ref_timestep < sampler.alphas_cumprod.shape[0]:
            raise ValueError(f"ref_timestep={cfg.ref_timestep} outside the schedule's [0, "
                             f"{sampler.alphas_cumprod.shape[0]})")
        if mesh is not None:
            params, inputs = shard_batch(mesh, batch_axis, params, inputs)
        # A Python float and a float32 array would be two signatures (weak vs strong type): normalise.
        return params, sampler, inputs, rng, jnp.asarray(guidance, jnp.float32)

    def fn(params, sampler, inputs, rng, guidance):
        return jitted(*arguments(params, sampler, inputs, rng, guidance))

    def compile_ahead(params, sampler, inputs, rng, guidance) -> Callable[[], jax.Array]:
        """Compiles for these arguments without sampling; returns `run()`, which samples with them (so compile
        time and sampling time can be measured apart)."""
        args = arguments(params, sampler, inputs, rng, guidance)
        compiled = jitted.lower(*args).compile()
        return lambda: compiled(*args)

    fn.jitted = jitted
    fn.compile_ahead = compile_ahead
    return fn


def shard_batch(mesh: jax.sharding.Mesh, axis: str, params: Any, inputs: dict) -> tuple[Any, dict]:
    """Places `inputs` split along their batch axis over `mesh[axis]` and `params` replicated."""
    from jax.sharding import NamedSharding, PartitionSpec  # noqa: PLC0415

    n = mesh.shape[axis]
    b = inputs["ref_image"].shape[0]
    if b % n:
        raise ValueError(f"{b} references cannot be split over the {n} devices of mesh axis {axis!r}; use a "
                         f"multiple of {n}")
    batch = NamedSharding(mesh, PartitionSpec(axis))
    inputs = {k: jax.device_put(v, batch) for k, v in inputs.items()}
    return jax.device_put(params, NamedSharding(mesh, PartitionSpec())), inputs
