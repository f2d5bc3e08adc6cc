"""Loads an SCD model for sampling from local files (nothing is downloaded).

`load_trained` is the one entry point. It accepts a `humandiff.train` workdir (read directly: parameters, modules
from its config, training schedule; nothing is written) or a diffusers-layout folder (what `humandiff.export`
writes):

    CKPT/unet/            config.json + diffusion_pytorch_model.safetensors   (required)
    CKPT/reference_unet/  the same layout: a separate reference UNet          (optional: the reference pass runs it)
    CKPT/motion_adapter/  diffusers MotionAdapter (video stage)               (optional: image model without it)
    CKPT/vae/             AutoencoderKL                                     (optional: pixel space without it)
    CKPT/image_encoder/   transformers CLIPVisionModelWithProjection         (optional: zero context without it)
    CKPT/scheduler/       scheduler_config.json                              (optional: schedule defaults)
    CKPT/pose_encoder.safetensors  or  CKPT/pose_encoder/*.safetensors      (or --pose-encoder FILE)
    CKPT/model_index.json  its "humandiff" block (written by `humandiff.export`): the settings the model was
                           trained with (interaction, ref_timestep, use_ref_pose, task, resolution) and its sampler
                           settings (sampler, num_steps, guidance_scale), used as `humandiff.sample`'s defaults

The pose-encoder file holds a torch-style state dict (`conv_in.weight`, `blocks.0.weight`, ..., `conv_out.weight`,
as `humandiff.weights.pose.pose_encoder_to_torch` writes); its architecture is read from the tensor shapes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from humandiff.models.scd import Models
from humandiff.diffusion.schedules import ScheduleConfig, schedule_config_from
from humandiff.weights import io


@dataclasses.dataclass
class Loaded:
    """What the sampler needs: modules, parameters, schedule and the checkpoint's sampler defaults."""

    models: Models
    params: dict
    schedule: ScheduleConfig
    spacing: str = "trailing"
    steps_offset: int = 0
    sources: dict = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)  # model_index.json "humandiff" block ({} if absent)
    config: Any = None  # the training config (workdirs; None for export folders)


def read_settings(path: str) -> dict:
    """The "humandiff" block of `path/model_index.json` (SCD training settings), or {} without that file."""
    index_file = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_file):
        return {}
    settings = io.read_config(index_file).get("humandiff", {})
    if not isinstance(settings, dict):
        raise ValueError(f"{index_file}: the 'humandiff' entry must be an object, got {type(settings).__name__}")
    return settings


def load_trained(path: str, *, ema: bool = True, step: int | None = None, config: Any = None,
                 pose_encoder: str | None = None, allow_pickle: bool = False,
                 unet_overrides: dict | None = None) -> Loaded:
    """The one reader of trained models: a `humandiff.train` workdir (or one of its checkpoints) or an export
    folder (diffusers layout, see the module docstring). `humandiff.sample` and `humandiff.training.evals` call it.

    A workdir is read directly (its parameters, the modules its config describes, the training schedule and
    sampler spacing); nothing is written.

    Args:
      path: workdir, `<workdir>/checkpoints[/<step>]`, or an export folder.
      ema: the EMA weights when the run kept them (else the raw ones); workdirs only.
      step: checkpoint step (default: the latest); workdirs only.
      config: the training config (ConfigDict or "file.py[:arg]") instead of `<workdir>/config.json`.
      pose_encoder, allow_pickle, unet_overrides: as in `load_checkpoint` (export folders only).

    Raises:
      FileNotFoundError / ValueError (incl. `export.ExportError`, `io.WeightsError`) naming the path.
    """
    if os.path.isdir(os.path.join(path, "unet")):
        return load_checkpoint(path, pose_encoder=pose_encoder, allow_pickle=allow_pickle,
                               unet_overrides=unet_overrides)
    if pose_encoder is not None:
        raise ValueError(f"--pose-encoder {pose_encoder}: {path} is a training workdir, whose checkpoint holds the "
                         "pose encoder it was trained with")
    if unet_overrides:
        raise ValueError(f"{path} is a training workdir: its UNet is the one its config describes "
                         f"(overrides {sorted(unet_overrides)} apply to export folders)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    from humandiff.checkpoints import export  # noqa: PLC0415  (jax and the model code, only for workdirs)
    from humandiff.training.step import make_schedule  # noqa: PLC0415

    try:
        trained = export.read_checkpoint(path, config=config, ema=ema, step=step)
    except export.ExportError as e:
        if not (ema and "EMA" in str(e)):
            raise
        trained = export.read_checkpoint(path, config=config, step=step)  # the run kept no EMA: its raw weights
    cfg = trained.config
    sources = {"workdir": trained.workdir, "step": trained.step, "ema": trained.ema}
    return Loaded(trained.models, trained.params, make_schedule(cfg).config,
                  spacing=cfg.sample.get("timestep_spacing", "trailing"), steps_offset=0, sources=sources,
                  settings=export.settings(trained, "fp32"), config=cfg)


def _find_pose_encoder(ckpt: str) -> str | None:
    for cand in (os.path.join(ckpt, "pose_encoder.safetensors"), os.path.join(ckpt, "pose_encoder")):
        if os.path.exists(cand):
            return cand
    return None


def load_pose_encoder(path: str, *, allow_pickle: bool = False) -> tuple[Any, dict]:
    """A `PoseEncoder` from a torch-style state dict file/folder; channels are inferred from the weights.

    Raises:
      WeightsError: missing file, or tensors that do not form a pose encoder (names the offending key).
    """
    from humandiff.models.pose_encoder import PoseEncoder  # noqa: PLC0415
    from humandiff.weights.diffusers import params_from_state_dict  # noqa: PLC0415
    from humandiff.weights.pose import pose_encoder_shapes  # noqa: PLC0415

    if not os.path.exists(path):
        raise io.WeightsError(f"pose encoder weights not found: {path}")
    state = io.read_state_dict(path, allow_pickle=allow_pickle)
    prefix = "controlnet_cond_embedding." if any(k.startswith("controlnet_cond_embedding.") for k in state) else ""
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for key in ("conv_in.weight", "conv_out.weight"):
        if key not in state:
            raise io.WeightsError(f"{path}: not a pose encoder state dict (missing {prefix}{key})")
    blocks = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"blocks\.(\d+)\.weight", k)))
    chans = [int(state["conv_in.weight"].shape[0])]
    chans += [int(state[f"blocks.{i}.weight"].shape[0]) for i in blocks if i % 2 == 1]
    in_channels = int(state["conv_in.weight"].shape[1])  # 3: pose image; 5: plus (row, column) coordinates
    if in_channels not in (3, 5):
        raise io.WeightsError(f"{path}: {prefix}conv_in.weight reads {in_channels} channels; expected 3 (pose image) "
                              "or 5 (pose image + coordinate channels)")
    module = PoseEncoder(out_channels=int(state["conv_out.weight"].shape[0]), block_out_channels=tuple(chans),
                         coord_channels=in_channels == 5)
    params = params_from_state_dict(state, pose_encoder_shapes(module), path)
    return module, params


def _match_pose_injection(unet: Any, channels: int, source: str) -> Any:
    """Pose features are added after conv_in (block_out_channels[0] wide) or to the latent input (in_channels)."""
    if channels == unet.block_out_channels[0]:
        return unet.clone(pose_injection="conv_in")
    if channels == unet.in_channels:
        return unet.clone(pose_injection="input")
    raise ValueError(f"{source}: pose encoder outputs {channels} channels; the UNet needs "
                     f"{unet.block_out_channels[0]} (conv_in injection) or {unet.in_channels} (input injection)")


def load_checkpoint(path: str, *, pose_encoder: str | None = None, allow_pickle: bool = False,
                    unet_overrides: dict | None = None) -> Loaded:
    """Loads a diffusers-layout folder (see the module docstring) into a `Loaded`.

    Args:
      path: checkpoint folder.
      pose_encoder: pose-encoder weight file overriding the one in the folder.
      allow_pickle: opt in to pickle weight files (`torch.load(weights_only=True)`).
      unet_overrides: extra UNet fields (attention_impl, dtype, interaction, pose_injection, ...).

    Raises:
      FileNotFoundError / WeightsError / ValueError with the offending path.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint folder not found: {path}")
    unet_dir = os.path.join(path, "unet")
    if not os.path.isdir(unet_dir):
        raise ValueError(f"{path} is not a diffusers-layout checkpoint: no unet/ folder (a training workdir is "
                         "read by load_trained)")
    from humandiff.weights import load_unet, load_vae  # noqa: PLC0415

    sources = {"unet": unet_dir}
    settings = read_settings(path)
    unet_overrides = dict(unet_overrides or {})
    if "interaction" in settings:
        unet_overrides.setdefault("interaction", settings["interaction"])
    if os.path.isdir(os.path.join(path, "motion_adapter")) and "motion_adapter" not in unet_overrides:
        sources["motion_adapter"] = unet_overrides["motion_adapter"] = os.path.join(path, "motion_adapter")
    unet, unet_params = load_unet(unet_dir, allow_pickle=allow_pickle, **unet_overrides)
    params = {"unet": unet_params}
    reference_dir = os.path.join(path, "reference_unet")
    if os.path.isdir(reference_dir):  # model.reference_net="separate": the reference pass's own UNet
        sources["reference_unet"] = reference_dir
        overrides = {k: v for k, v in unet_overrides.items() if k != "motion_adapter"}
        _, params["reference_unet"] = load_unet(reference_dir, allow_pickle=allow_pickle, **overrides)
    vae = image_encoder = pose = None
    if os.path.isdir(os.path.join(path, "vae")):
        sources["vae"] = os.path.join(path, "vae")
        vae, params["vae"] = load_vae(sources["vae"], allow_pickle=allow_pickle)
    if os.path.isdir(os.path.join(path, "image_encoder")):
        from humandiff.weights.clip import load_image_encoder  # noqa: PLC0415

        sources["image_encoder"] = os.path.join(path, "image_encoder")
        image_encoder, params["image_encoder"] = load_image_encoder(sources["image_encoder"],
                                                                   allow_pickle=allow_pickle)
    pose_path = pose_encoder or _find_pose_encoder(path)
    if pose_path is None:
        raise FileNotFoundError(f"no pose encoder: put pose_encoder.safetensors in {path} or pass --pose-encoder")
    sources["pose_encoder"] = pose_path
    pose, params["pose_encoder"] = load_pose_encoder(pose_path, allow_pickle=allow_pickle)
    unet = _match_pose_injection(unet, pose.out_channels, pose_path)
    sched_cfg, spacing, offset = ScheduleConfig(), "leading", 1  # SD-1.5 scheduler defaults
    sched_file = os.path.join(path, "scheduler", "scheduler_config.json")
    if os.path.isfile(sched_file):
        raw = io.read_config(sched_file)
        sources["scheduler"] = sched_file
        sched_cfg = schedule_config_from(raw)
        spacing = raw.get("timestep_spacing", "trailing" if sched_cfg.zero_terminal_snr else "leading")
        offset = int(raw.get("steps_offset", 0))
    models = Models(unet=unet, pose_encoder=pose, vae=vae, image_encoder=image_encoder)
    return Loaded(models, params, sched_cfg, spacing, offset, sources, settings)
