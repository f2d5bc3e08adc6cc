"""Run an exported humandiff SCD model in PyTorch: reference K/V attention processors, pose encoder, DDIM sampler.

Needs the `[torch]` extra (torch + diffusers; transformers for an image encoder). An exported folder
(`python -m humandiff.export`) loads with `load_pipeline(folder)`; `animate(pipe, ...)` then mirrors
`humandiff.diffusion.pipeline.generate` (cached reference pass, classifier-free guidance, DDIM):

    pipe = load_pipeline("exported/")
    frames = animate(pipe, ref_image, poses, num_steps=20, guidance=3.5)   # [B, F, 3, H, W] in [-1, 1]

How SCD maps onto a stock diffusers `UNet2DConditionModel`: every spatial self-attention (`attn1`) gets an
`SCDAttnProcessor` sharing one `SCDState`. In "write" mode (the reference pass) each processor stores its K and V
`[B, H, L, D]`; in "read" mode (target passes) the target queries attend to `[K_ref ; K_tgt]`, the cache entry i
serving target entries `i*m .. i*m + m - 1` (frames and CFG branches of one reference are contiguous), and
`ref_keep=False` masks the reference tokens of an entry. Cross-attention and everything else run unchanged. Pose
features are added after `conv_in` (or to the input) by a forward hook, so the UNet's state dict is untouched.
Tensors are NCHW here (torch convention); humandiff's JAX side is NHWC.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

try:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn
except ImportError as _e:  # the package itself does not need torch
    raise ImportError("humandiff.torch_scd needs PyTorch and diffusers: pip install 'humandiff[torch]'") from _e

SCD_MODES = (None, "write", "read")
POSE_INJECTIONS = ("conv_in", "input")


@dataclasses.dataclass
class SCDState:
    """Mutable state shared by the processors and hooks of one UNet.

    Attributes:
      mode: None (plain attention), "write" (store reference K/V) or "read" (attend to `[K_ref ; K_tgt]`).
      cache: processor name -> (K, V) `[Br, H, Lr, D]` from the last "write" pass.
      ref_keep: optional bool `[Bt]` for "read"; False hides the reference from that entry.
      pose_features: optional `[N, C, h, w]` added at the injection point of the next UNet call.
    """

    mode: str | None = None
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)
    ref_keep: torch.Tensor | None = None
    pose_features: torch.Tensor | None = None


class SCDAttnProcessor:
    """diffusers attention processor for a spatial self-attention with SCD's reference K/V write/read.

    Args:
      name: the processor's key in `unet.attn_processors` (the cache key).
      state: the `SCDState` shared by all processors of the UNet.
    """

    def __init__(self, name: str, state: SCDState):
        self.name = name
        self.state = state

    def _reference(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`[K_ref ; K]`, `[V_ref ; V]` and the boolean attention mask for "read" mode."""
        if self.name not in self.state.cache:
            raise ValueError(f"SCD read mode but no reference K/V for {self.name}: run the reference pass first")
        k_ref, v_ref = self.state.cache[self.name]
        bt, br = k.shape[0], k_ref.shape[0]
        if bt % br:
            raise ValueError(f"{self.name}: target batch {bt} is not a multiple of the reference batch {br}")
        if bt != br:  # entry i reads cache entry i // m
            k_ref, v_ref = k_ref.repeat_interleave(bt // br, 0), v_ref.repeat_interleave(bt // br, 0)
        mask = None
        keep = self.state.ref_keep
        if keep is not None:
            if keep.shape != (bt,):
                raise ValueError(f"ref_keep has shape {tuple(keep.shape)}; expected ({bt},) (one per target entry)")
            lr, lt = k_ref.shape[2], k.shape[2]
            mask = torch.ones((bt, 1, 1, lr + lt), dtype=torch.bool, device=k.device)
            mask[:, 0, 0, :lr] = keep.to(device=k.device, dtype=torch.bool)[:, None]
        return torch.cat([k_ref.to(k.dtype), k], 2), torch.cat([v_ref.to(v.dtype), v], 2), mask

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        del temb, args, kwargs
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(f"{self.name}: SCD processors serve plain spatial self-attention only "
                             "([B, L, C] input, no context, no mask)")
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        b, length, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads
        split = lambda t: t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731  [B, H, L, D]
        q, k, v = split(q), split(k), split(v)
        mask = None
        if self.state.mode == "write":
            self.state.cache[self.name] = (k, v)
        elif self.state.mode == "read":
            k, v, mask = self._reference(k, v)
        elif self.state.mode is not None:
            raise ValueError(f"unknown SCD mode {self.state.mode!r}; expected one of {SCD_MODES}")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, length, -1).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class SCDUNet:
    """A diffusers `UNet2DConditionModel` (or `UNetMotionModel`) with SCD processors and a pose hook installed
    (reversible).

    Video: the spatial attention names of a `UNetMotionModel` built with `from_unet2d` are those of its 2D UNet, so
    a 2D `SCDUNet` (the reference pass: one image, no motion modules, as in humandiff) and a video `SCDUNet`
    sharing its `state` (the target passes) read and write the same cache.

    Args:
      unet: the diffusers UNet (its weights are not changed).
      pose_injection: "conv_in" (features added after `conv_in`) or "input" (added to the latent input).
      state: share another `SCDUNet`'s state (default: a new one).
    """

    def __init__(self, unet: nn.Module, pose_injection: str = "conv_in", state: SCDState | None = None):
        if pose_injection not in POSE_INJECTIONS:
            raise ValueError(f"unknown pose_injection={pose_injection!r}; expected one of {POSE_INJECTIONS}")
        self.unet = unet
        self.state = SCDState() if state is None else state
        self.is_video = type(unet).__name__ == "UNetMotionModel"
        self.pose_injection = pose_injection
        self._original = dict(unet.attn_processors)
        procs = {}
        for name, proc in self._original.items():
            scd = name.endswith("attn1.processor") and "motion_modules" not in name
            procs[name] = SCDAttnProcessor(name, self.state) if scd else proc
        self.names = [n for n, p in procs.items() if isinstance(p, SCDAttnProcessor)]
        unet.set_attn_processor(procs)
        if pose_injection == "conv_in":
            self._hook = unet.conv_in.register_forward_hook(self._add_after)
        else:
            self._hook = unet.conv_in.register_forward_pre_hook(self._add_before)

    def _add_after(self, module, inputs, output):
        del module, inputs
        feats = self.state.pose_features
        return output if feats is None else output + feats.to(output.dtype)

    def _add_before(self, module, inputs):
        del module
        feats = self.state.pose_features
        return inputs if feats is None else (inputs[0] + feats.to(inputs[0].dtype),) + tuple(inputs[1:])

    def remove(self) -> None:
        """Restores the UNet's original processors and removes the pose hook."""
        self.unet.set_attn_processor(self._original)
        self._hook.remove()

    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor, *,
                 pose_features: torch.Tensor | None = None, scd_mode: str | None = None,
                 ref_keep: torch.Tensor | None = None, num_frames: int = 1) -> torch.Tensor:
        """One UNet call, as humandiff's `UNet2DConditionModel.apply` with the same keywords (NCHW tensors).

        Args:
          sample: `[N, C, h, w]` latents.
          timesteps: scalar or `[N]`.
          context: `[N, S, D]` cross-attention context.
          pose_features: optional `[N, Cp, h, w]` added at the injection point.
          scd_mode: None, "write" (reference pass: fills the cache) or "read" (target pass: reads it).
          ref_keep: optional bool `[N]` for "read".
          num_frames: frames per video (`N = videos * num_frames`, frames contiguous); a `UNetMotionModel` runs its
            motion modules over them, a 2D UNet treats them as independent images.

        Returns:
          The UNet output `[N, C, h, w]`.
        """
        if scd_mode not in SCD_MODES:
            raise ValueError(f"unknown scd_mode {scd_mode!r}; expected one of {SCD_MODES}")
        if scd_mode == "write":
            self.state.cache = {}
        self.state.mode, self.state.ref_keep, self.state.pose_features = scd_mode, ref_keep, pose_features
        try:
            t = torch.as_tensor(timesteps, dtype=torch.float32, device=sample.device)
            if not self.is_video:
                return self.unet(sample, t, context, return_dict=False)[0]
            n, f = sample.shape[0], num_frames
            if n % f:
                raise ValueError(f"batch {n} is not a multiple of num_frames={f}")
            video = sample.reshape(n // f, f, *sample.shape[1:]).transpose(1, 2)  # [videos, C, F, h, w]
            t = t.reshape(-1)[::f] if t.ndim and t.numel() == n else t  # one timestep per video
            out = self.unet(video, t, context, return_dict=False)[0]
            return out.transpose(1, 2).reshape(sample.shape[0], -1, *out.shape[3:])
        finally:
            self.state.mode, self.state.ref_keep, self.state.pose_features = None, None, None


class PoseEncoder(nn.Module):
    """torch twin of `humandiff.models.pose_encoder.PoseEncoder` (same parameter names: `conv_in`, `blocks.i`,
    `conv_out`); input `[N, 3, H, W]` pose images in [0, 1]."""

    def __init__(self, out_channels: int = 320, block_out_channels: Sequence[int] = (16, 32, 96, 256),
                 coord_channels: bool = False):
        super().__init__()
        chans = tuple(int(c) for c in block_out_channels)
        self.config = {"out_channels": int(out_channels), "block_out_channels": list(chans),
                       "coord_channels": bool(coord_channels)}
        self.coord_channels = bool(coord_channels)
        self.conv_in = nn.Conv2d(5 if coord_channels else 3, chans[0], 3, padding=1)
        blocks = []
        for i in range(len(chans) - 1):
            blocks.append(nn.Conv2d(chans[i], chans[i], 3, padding=1))
            blocks.append(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(chans[-1], out_channels, 3, padding=1)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` -> `[N, out_channels, H / 2**(stages-1), W / 2**(stages-1)]`."""
        if self.coord_channels:  # (row, column) in [-1, 1], as the Flax encoder's coordinate_grid
            n, _, h, w = pose.shape
            rows = torch.linspace(-1.0, 1.0, h, dtype=pose.dtype, device=pose.device)
            cols = torch.linspace(-1.0, 1.0, w, dtype=pose.dtype, device=pose.device)
            grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=0)
            pose = torch.cat([pose, grid.expand(n, 2, h, w)], dim=1)
        x = F.silu(self.conv_in(pose))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(x)

    @classmethod
    def from_pretrained(cls, folder: str, torch_dtype: torch.dtype | None = None) -> PoseEncoder:
        """Loads a `pose_encoder/` folder written by `python -m humandiff.export` (config.json + safetensors)."""
        from safetensors.torch import load_file  # noqa: PLC0415

        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        model = cls(config["out_channels"], config["block_out_channels"], config.get("coord_channels", False))
        state = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder}: pose encoder weights do not match: missing {missing}, unexpected {unexpected}")
        return model.to(torch_dtype or next(iter(state.values())).dtype).eval()


@dataclasses.dataclass
class Pipeline:
    """The torch modules of an exported model plus its SCD settings (from model_index.json)."""

    unet: SCDUNet
    scheduler: Any
    pose_encoder: PoseEncoder | None = None
    vae: Any = None
    image_encoder: Any = None
    settings: dict = dataclasses.field(default_factory=dict)
    video_unet: SCDUNet | None = None  # UNetMotionModel sharing `unet`'s cache (video models)
    reference_unet: SCDUNet | None = None  # the reference pass's own UNet sharing the cache (separate reference net)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.unet.dtype


def load_pipeline(folder: str, torch_dtype: torch.dtype | None = None, device: str = "cpu") -> Pipeline:
    """Loads an exported folder (unet/, scheduler/, pose_encoder/, optional reference_unet/, vae/, image_encoder/).

    Args:
      folder: output of `python -m humandiff.export`.
      torch_dtype: cast every module to this dtype (default: as stored).
      device: torch device.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: PLC0415

    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise FileNotFoundError(f"{folder} has no model_index.json: not a humandiff export folder")
    with open(index_path, encoding="utf-8") as f:
        settings = json.load(f).get("humandiff", {})
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), torch_dtype=torch_dtype).to(device)
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    pose = vae = image_encoder = None
    if os.path.isdir(os.path.join(folder, "pose_encoder")):
        pose = PoseEncoder.from_pretrained(os.path.join(folder, "pose_encoder"), torch_dtype).to(device)
    if os.path.isdir(os.path.join(folder, "vae")):
        vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), torch_dtype=torch_dtype).to(device)
    if os.path.isdir(os.path.join(folder, "image_encoder")):
        from transformers import CLIPVisionModelWithProjection  # noqa: PLC0415

        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            os.path.join(folder, "image_encoder"), dtype=torch_dtype).to(device)
    scd = SCDUNet(unet.eval(), settings.get("pose_injection", "conv_in"))
    video = None
    if os.path.isdir(os.path.join(folder, "motion_adapter")):
        from diffusers import MotionAdapter, UNetMotionModel  # noqa: PLC0415

        adapter = MotionAdapter.from_pretrained(os.path.join(folder, "motion_adapter"), torch_dtype=torch_dtype)
        motion = UNetMotionModel.from_unet2d(unet, adapter).to(device=device, dtype=unet.dtype).eval()
        video = SCDUNet(motion, scd.pose_injection, state=scd.state)
    reference = None
    if os.path.isdir(os.path.join(folder, "reference_unet")):  # written for model.reference_net="separate"
        ref_unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "reference_unet"),
                                                        torch_dtype=torch_dtype).to(device)
        reference = SCDUNet(ref_unet.eval(), scd.pose_injection, state=scd.state)
    return Pipeline(scd, scheduler, pose, vae, image_encoder, settings, video, reference)


def window_starts(num_frames: int, window: int, overlap: int) -> list[int]:
    """Start frames of overlapping windows covering `num_frames`, the last aligned to the end (as humandiff's JAX
    pipeline)."""
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, window - overlap))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def _embedding(pipe: Pipeline, clip_image: torch.Tensor | None, batch: int, device: Any) -> torch.Tensor:
    """`[B, 1, D]` image embedding of the reference, or zeros without an image encoder."""
    dim = int(pipe.unet.unet.config.cross_attention_dim)
    if pipe.image_encoder is None or clip_image is None:
        return torch.zeros((batch, 1, dim), dtype=torch.float32, device=device)
    out = pipe.image_encoder(pixel_values=clip_image.to(device, pipe.image_encoder.dtype)).image_embeds
    return out.reshape(batch, 1, -1).float()


def _latents(pipe: Pipeline, images: torch.Tensor) -> torch.Tensor:
    """`[N, 3, H, W]` in [-1, 1] -> scaled latents (VAE posterior mean), or the images in pixel space."""
    if pipe.vae is None:
        return images.float()
    cfg = pipe.vae.config
    mean = pipe.vae.encode(images.to(pipe.vae.dtype)).latent_dist.mean.float()
    return (mean - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor


def _decode(pipe: Pipeline, z: torch.Tensor) -> torch.Tensor:
    if pipe.vae is None:
        return z.clamp(-1.0, 1.0)
    cfg = pipe.vae.config
    z = z / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    return pipe.vae.decode(z.to(pipe.vae.dtype)).sample.float().clamp(-1.0, 1.0)


def _pose(pipe: Pipeline, poses: torch.Tensor | None) -> torch.Tensor | None:
    if poses is None or pipe.pose_encoder is None:
        return None
    return pipe.pose_encoder(poses.to(next(pipe.pose_encoder.parameters()).dtype)).float()


def _target_inputs(branch_embed: torch.Tensor, tgt_pose: torch.Tensor | None, frames: int, cfg: bool,
                   drop_ref: bool, drop_pose: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Context, pose features and ref_keep of the target batch, laid out `[B, branch, F]` and flattened."""
    b, nb = branch_embed.shape[:2]
    n, tail = b * nb * frames, branch_embed.shape[2:]
    ctx = branch_embed[:, :, None].expand(b, nb, frames, *tail).reshape(n, *tail)
    pose = None
    if tgt_pose is not None:  # [B * F, C, h, w] -> [B, nb, F, C, h, w]
        p = tgt_pose.reshape(b, 1, frames, *tgt_pose.shape[1:]).expand(b, nb, *([-1] * tgt_pose.ndim))
        if cfg and drop_pose:
            p = p * torch.tensor([1.0, 0.0], device=p.device).reshape(1, 2, *([1] * tgt_pose.ndim))
        pose = p.reshape(n, *tgt_pose.shape[1:])
    ref_keep = None
    if cfg and drop_ref:
        keep = torch.ones((b, nb, frames), dtype=torch.bool, device=branch_embed.device)
        keep[:, 1] = False
        ref_keep = keep.reshape(n)
    return ctx, pose, ref_keep


def _guided(pipe: Pipeline, x: torch.Tensor, t: Any, inputs: tuple, guidance: float, window: int,
            overlap: int) -> torch.Tensor:
    """Guided model output for latents `x` `[B, F, C, h, w]`: target passes over (overlapping) frame windows."""
    ctx, pose, keep = inputs  # flattened [B, nb, F]
    b, frames = x.shape[:2]
    nb = ctx.shape[0] // (b * frames)
    net = pipe.video_unet or pipe.unet
    width = frames if pipe.video_unet is None else min(window, frames)
    view = lambda a: None if a is None else a.reshape(b, nb, frames, *a.shape[1:])  # noqa: E731
    ctx, pose, keep = view(ctx), view(pose), view(keep)
    acc, count = torch.zeros_like(x), torch.zeros(frames, device=x.device)
    for start in window_starts(frames, width, min(overlap, width - 1)):
        win, m = slice(start, start + width), b * nb * width
        flat = lambda a: None if a is None else a[:, :, win].reshape(m, *a.shape[3:])  # noqa: E731
        xb = x[:, None, win].expand(b, nb, width, *x.shape[2:]).reshape(m, *x.shape[2:]).to(pipe.dtype)
        out = net(xb, torch.full((m,), float(t)), flat(ctx), pose_features=flat(pose), scd_mode="read",
                  ref_keep=flat(keep), num_frames=width)
        out = out.float().reshape(b, nb, width, *x.shape[2:])
        acc[:, win] += out[:, 0] if nb == 1 else out[:, 1] + guidance * (out[:, 0] - out[:, 1])
        count[win] += 1
    return acc / count.reshape(1, frames, 1, 1, 1)


@torch.no_grad()
def animate(pipe: Pipeline, ref_image: torch.Tensor, poses: torch.Tensor | None = None, *,
            ref_pose: torch.Tensor | None = None, clip_image: torch.Tensor | None = None, num_steps: int = 20,
            guidance: float = 3.5, cfg: bool = True, ref_timestep: int | None = None, uncond_drop_ref: bool = True,
            uncond_drop_embed: bool = True, uncond_drop_pose: bool = False, use_ref_pose: bool | None = None,
            noise: torch.Tensor | None = None, generator: torch.Generator | None = None, window: int = 16,
            overlap: int = 4) -> torch.Tensor:
    """Samples frames with DDIM, mirroring `humandiff.diffusion.pipeline.generate` (cached mode).

    The reference pass runs once at `ref_timestep`; each DDIM step runs the target pass on a batch laid out
    `[B, branch, F]` (conditional, then unconditional branch) that reads the cache. The unconditional branch drops
    the reference (`ref_keep`), the image embedding and/or the target pose as the flags say. Frames are
    independent (image model), so the whole clip goes through at once.

    Args:
      pipe: from `load_pipeline`.
      ref_image: `[B, 3, H, W]` in [-1, 1].
      poses: optional target pose images `[B, F, 3, H, W]` in [0, 1] (None: one frame, no pose).
      ref_pose: optional reference pose image `[B, 3, H, W]` in [0, 1].
      clip_image: optional CLIP-normalised `[B, 3, S, S]` for the image encoder.
      num_steps: DDIM steps (the scheduler's spacing from scheduler_config.json).
      guidance: CFG scale.
      cfg: run the unconditional branch.
      ref_timestep: reference-pass timestep (default: the exported `ref_timestep`, else 0).
      uncond_drop_ref, uncond_drop_embed, uncond_drop_pose: what the unconditional branch loses.
      use_ref_pose: add the reference pose features in the reference pass (default: exported setting).
      noise: optional initial latent noise `[B, F, C, h, w]` (to reproduce another sampler's run).
      generator: torch generator for the noise otherwise.
      window, overlap: video models run `window` frames per call, overlapping windows averaged (as humandiff's
        JAX pipeline with uniform fusion); image models run all frames at once (they are independent).

    Returns:
      `[B, F, 3, H, W]` float32 frames in [-1, 1].
    """
    unet, sched = pipe.unet, pipe.scheduler
    device = unet.unet.device
    if pipe.settings.get("interaction", "causal") != "causal":
        raise NotImplementedError(f"interaction={pipe.settings['interaction']!r}: the cached reference pass is exact "
                                  "only for causal SCD models; sample full-interaction models with humandiff's JAX "
                                  "pipeline (SamplingConfig(mode='joint'))")
    ref_timestep = int(pipe.settings.get("ref_timestep", 0) if ref_timestep is None else ref_timestep)
    use_ref_pose = bool(pipe.settings.get("use_ref_pose", True) if use_ref_pose is None else use_ref_pose)
    ref_image = ref_image.to(device)
    b = ref_image.shape[0]
    frames = 1 if poses is None else poses.shape[1]
    nb = 2 if cfg else 1
    z_ref = _latents(pipe, ref_image)
    embed = _embedding(pipe, clip_image, b, device)
    branch_embed = torch.stack([embed, torch.zeros_like(embed) if uncond_drop_embed else embed], 1)[:, :nb]
    tgt_pose = None if poses is None else _pose(pipe, poses.to(device).flatten(0, 1))
    ref_feats = _pose(pipe, None if ref_pose is None else ref_pose.to(device)) if use_ref_pose else None
    dt = pipe.dtype

    # Reference pass, once: two cache entries per reference only when the uncond branch keeps the reference
    # but not the embedding (then its K/V depend on the context).
    nr = 2 if cfg and uncond_drop_embed and not uncond_drop_ref else 1
    rep = lambda x: None if x is None else x.repeat_interleave(nr, 0).to(dt)  # noqa: E731
    reference_unet = pipe.reference_unet or unet  # a separate reference UNet fills the same cache
    reference_unet(rep(z_ref), torch.full((b * nr,), float(ref_timestep)), branch_embed[:, :nr].flatten(0, 1).to(dt),
                   pose_features=rep(ref_feats), scd_mode="write")

    ctx, pose, ref_keep = _target_inputs(branch_embed, tgt_pose, frames, cfg, uncond_drop_ref, uncond_drop_pose)
    ctx, pose = ctx.to(dt), None if pose is None else pose.to(dt)

    shape = (b, frames) + tuple(z_ref.shape[1:])
    if noise is None:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    x = noise.to(device, torch.float32) * sched.init_noise_sigma
    sched.set_timesteps(num_steps, device=device)
    for t in sched.timesteps:
        out = _guided(pipe, sched.scale_model_input(x, t), t, (ctx, pose, ref_keep), guidance, window, overlap)
        x = sched.step(out.flatten(0, 1), t, x.flatten(0, 1), eta=0.0).prev_sample.reshape(x.shape)
    images = _decode(pipe, x.flatten(0, 1))
    return images.reshape(b, frames, *images.shape[1:])
