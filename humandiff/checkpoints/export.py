"""Training checkpoint -> diffusers-layout folder that PyTorch (diffusers + `humandiff.torch_scd`) runs.

A training run (`python -m humandiff.train`) leaves `<workdir>/checkpoints/<step>/state/` (Orbax: trainable
params, EMA, optimizer state, step) and, when some parameters are frozen but not loaded from a pretrained folder,
`<workdir>/frozen/`. The modules themselves are described by the training config (`<workdir>/config.json`, or
the config file passed explicitly). `read_checkpoint` puts the full parameter tree back together;
`write_export` writes:

    OUT/unet/              config.json + diffusion_pytorch_model.safetensors   (diffusers UNet2DConditionModel)
    OUT/reference_unet/    the same layout: the reference pass's own UNet  (model.reference_net="separate" only)
    OUT/pose_encoder/      config.json + diffusion_pytorch_model.safetensors   (humandiff.torch_scd.PoseEncoder)
    OUT/motion_adapter/    diffusers MotionAdapter layout                      (video models only)
    OUT/motion_module.safetensors  original AnimateDiff key layout             (video models only)
    OUT/vae/               diffusers AutoencoderKL                             (latent models only)
    OUT/image_encoder/     transformers CLIPVisionModelWithProjection          (when trained with one)
    OUT/scheduler/         scheduler_config.json (diffusers DDIMScheduler: the training schedule)
    OUT/model_index.json   component classes + a "humandiff" block: SCD settings, step, EMA, training config
    OUT/README.md          model card

The folder is written next to OUT first and moved into place at the end, so a failed export leaves nothing half
written; an existing non-empty OUT is replaced only with `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from humandiff.weights import io

DTYPES = ("fp32", "fp16", "bf16")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class ExportError(ValueError):
    """An export request that cannot be carried out as given (the message names the path or value)."""


@dataclasses.dataclass
class Trained:
    """A training checkpoint put back together.

    Attributes:
      config: the training config (ConfigDict).
      models: `humandiff.models.scd.Models` built from it.
      params: full parameter tree `{"unet", "pose_encoder", "reference_unet"?, "vae"?, "image_encoder"?}` (host
        arrays).
      step: checkpoint step.
      ema: whether `params` holds the EMA weights of the trainable part.
      workdir: training working directory.
    """

    config: Any
    models: Any
    params: dict
    step: int
    ema: bool
    workdir: str


def _numpy_dtype(dtype: str) -> Any:
    if dtype == "fp32":
        return np.float32
    if dtype == "fp16":
        return np.float16
    import ml_dtypes  # noqa: PLC0415  (a jax dependency)

    return ml_dtypes.bfloat16


def check_dtype(dtype: str) -> str:
    """Returns `dtype` if it is one of `DTYPES`, else raises ExportError naming it."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown --dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return dtype


# ------------------------------------------------------------------------------------------- reading a checkpoint


def _steps(ckpt_dir: str) -> list[int]:
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(n) for n in os.listdir(ckpt_dir)
                  if n.isdigit() and os.path.isdir(os.path.join(ckpt_dir, n, "state")))


def resolve_checkpoint(path: str, step: int | None = None) -> tuple[str, int]:
    """`(workdir, step)` from a workdir, its `checkpoints/` folder or one `checkpoints/<step>` folder.

    Raises:
      ExportError: the path does not exist or holds no complete training checkpoint.
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ExportError(f"checkpoint not found: {path} is not a directory")
    name, parent = os.path.basename(path), os.path.dirname(path)
    if name.isdigit() and os.path.basename(parent) == "checkpoints":
        if not os.path.isdir(os.path.join(path, "state")):
            raise ExportError(f"{path} is not a training checkpoint: it has no state/ folder")
        if step is not None and step != int(name):
            raise ExportError(f"{path} is step {name}, but step {step} was asked for")
        return os.path.dirname(parent), int(name)
    workdir = parent if name == "checkpoints" else path
    steps = _steps(os.path.join(workdir, "checkpoints"))
    if not steps:
        raise ExportError(f"{path} is not a humandiff training checkpoint: expected <workdir>/checkpoints/<step>/"
                          "state/ as written by `python -m humandiff.train`")
    if step is None:
        return workdir, steps[-1]
    if step not in steps:
        raise ExportError(f"{workdir} has no checkpoint for step {step} (steps: {steps})")
    return workdir, step


def load_config(workdir: str, config: Any = None) -> Any:
    """The training config: `config` (a ConfigDict or a "file.py[:arg]" spec) or `<workdir>/config.json`."""
    import ml_collections  # noqa: PLC0415

    from humandiff import config_lib  # noqa: PLC0415

    if isinstance(config, str):
        try:
            return config_lib.load(config)
        except config_lib.ConfigError as e:
            raise ExportError(f"--config {config}: {e}") from e
    if config is not None:
        return config
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ExportError(f"{workdir} holds no config.json; pass the training config with --config "
                          "configs/X.py[:args] (the one the run was trained with)")
    return ml_collections.ConfigDict(io.read_config(path))


def _restore(directory: str) -> Any:
    from humandiff.training import checkpoint  # noqa: PLC0415

    try:
        return checkpoint.restore_to_host(directory)
    except checkpoint.CheckpointError as e:
        raise ExportError(str(e)) from e


def _host(tree: Any) -> Any:
    import jax  # noqa: PLC0415

    return jax.tree.map(lambda x: np.asarray(x), tree)


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def read_checkpoint(path: str, *, config: Any = None, ema: bool = False, step: int | None = None) -> Trained:
    """Reads a training checkpoint into a full, validated parameter tree.

    Args:
      path: workdir, `<workdir>/checkpoints` or `<workdir>/checkpoints/<step>`.
      config: training config (ConfigDict or "file.py[:arg]"); default `<workdir>/config.json`.
      ema: use the EMA of the trainable parameters instead of the raw ones.
      step: checkpoint step (default: the one named by `path`, else the latest).

    Raises:
      ExportError: not a checkpoint, no EMA saved, or parameters that do not match the config's modules.
    """
    workdir, step = resolve_checkpoint(path, step)
    import jax  # noqa: PLC0415

    from humandiff.training import modeling  # noqa: PLC0415

    cfg = load_config(workdir, config)
    state = _restore(os.path.join(workdir, "checkpoints", str(step), "state"))
    if not isinstance(state, Mapping) or "params" not in state:
        raise ExportError(f"{workdir}/checkpoints/{step}/state holds no 'params': not a humandiff train state")
    if ema and not state.get("ema"):
        raise ExportError(f"--ema asked, but {workdir} step {step} saved no EMA (optim.ema_decay was 0)")
    trainable = state["ema"] if ema else state["params"]
    models, pretrained = modeling.build(cfg)
    params: dict = _host(dict(pretrained))
    frozen_dir = os.path.join(workdir, "frozen")
    if os.path.isdir(frozen_dir):
        params = _merge(params, _host(_restore(frozen_dir)))
    params = _merge(params, _host(trainable))
    abstract = jax.eval_shape(lambda k: modeling.init_params(models, cfg, k), jax.random.key(0))
    expected = {k: tuple(v.shape) for k, v in io.flatten(abstract).items()}
    # Pretrained folders may hold more than the trainer's tree (the VAE decoder: training only encodes); those
    # extra leaves are exported as loaded, everything else must match the config's modules exactly.
    from_folders = set(io.flatten(dict(pretrained)))
    got = {k: tuple(np.shape(v)) for k, v in io.flatten(params).items() if k in expected or k not in from_folders}
    try:
        io.validate(expected, got, f"{workdir} step {step}")
    except io.WeightsError as e:
        raise ExportError(f"checkpoint does not match the training config's modules: {e}") from e
    return Trained(cfg, models, params, int(step), bool(ema), workdir)


# ------------------------------------------------------------------------------------------------- writing


def _save(path: str, state: Mapping[str, np.ndarray], dtype: str) -> None:
    from safetensors.numpy import save_file  # noqa: PLC0415

    np_dtype = _numpy_dtype(dtype)
    out = {k: np.ascontiguousarray(np.asarray(v, np.float32).astype(np_dtype)) for k, v in state.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(out, path, metadata={"format": "pt"})


def _write_json(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def split_motion(unet_params: Mapping) -> tuple[dict, dict]:
    """UNet params -> (spatial params, motion-module params); the latter empty for image models."""
    flat = io.flatten(unet_params)
    motion = {k: v for k, v in flat.items() if "/motion_modules_" in k}
    spatial = {k: v for k, v in flat.items() if k not in motion}
    return io.unflatten(spatial), io.unflatten(motion)


def write_unet(folder: str, unet: Any, params: Mapping, dtype: str) -> None:
    """`unet/`: diffusers config.json + safetensors (spatial layers only; motion modules are written apart)."""
    from humandiff.weights.diffusers import to_state_dict, unet_config  # noqa: PLC0415

    spatial, _ = split_motion(params)
    config = unet_config(unet)
    if getattr(unet, "sample_size", None) is not None:  # diffusers pipelines read their default size from it
        config["sample_size"] = unet.sample_size
    _write_json(os.path.join(folder, "config.json"), config)
    _save(os.path.join(folder, WEIGHTS_NAME), to_state_dict(spatial), dtype)


def write_pose_encoder(folder: str, pose_encoder: Any, params: Mapping, dtype: str, pose_injection: str) -> None:
    """`pose_encoder/`: config.json (`humandiff.torch_scd.PoseEncoder` arguments) + safetensors."""
    from humandiff.weights.pose import pose_encoder_to_torch  # noqa: PLC0415

    _write_json(os.path.join(folder, "config.json"), {
        "_class_name": "PoseEncoder", "out_channels": int(pose_encoder.out_channels),
        "block_out_channels": [int(c) for c in pose_encoder.block_out_channels], "pose_injection": pose_injection,
        "coord_channels": bool(pose_encoder.coord_channels),
        "downsample_factor": int(pose_encoder.downsample_factor)})
    _save(os.path.join(folder, WEIGHTS_NAME), pose_encoder_to_torch(params), dtype)


def write_motion(out: str, unet: Any, params: Mapping, dtype: str) -> list[str]:
    """Motion modules as a diffusers `motion_adapter/` folder and an original-layout AnimateDiff file."""
    from humandiff.weights.motion import adapter_config, motion_to_torch  # noqa: PLC0415

    _, motion = split_motion(params)
    if not io.flatten(motion):
        return []
    length = int(unet.motion_max_seq_length)
    _write_json(os.path.join(out, "motion_adapter", "config.json"), adapter_config(unet))
    _save(os.path.join(out, "motion_adapter", WEIGHTS_NAME), motion_to_torch(motion, max_seq_length=length), dtype)
    _save(os.path.join(out, "motion_module.safetensors"),
          motion_to_torch(motion, layout="original", max_seq_length=length), dtype)
    return ["motion_adapter", "motion_module.safetensors"]


def _copy_config(src_dir: str, dst_dir: str, what: str) -> None:
    src = os.path.join(src_dir, "config.json")
    if not os.path.isfile(src):
        raise ExportError(f"the {what} was trained from {src_dir}, which no longer has a config.json")
    os.makedirs(dst_dir, exist_ok=True)
    shutil.copyfile(src, os.path.join(dst_dir, "config.json"))


def write_vae(folder: str, source_dir: str, params: Mapping, dtype: str) -> None:
    """`vae/`: the training VAE's config.json (copied) + its parameters as used in training."""
    from humandiff.weights.diffusers import to_state_dict  # noqa: PLC0415

    _copy_config(source_dir, folder, "VAE")
    _save(os.path.join(folder, WEIGHTS_NAME), to_state_dict(params), dtype)


def write_image_encoder(folder: str, source_dir: str, params: Mapping, dtype: str) -> None:
    """`image_encoder/`: transformers config.json (copied) + `model.safetensors`."""
    from humandiff.weights.clip import image_encoder_to_torch  # noqa: PLC0415

    _copy_config(source_dir, folder, "image encoder")
    _save(os.path.join(folder, "model.safetensors"), image_encoder_to_torch(params), dtype)


def scheduler_config(config: Any) -> dict:
    """diffusers `DDIMScheduler` config holding the training schedule (and the training-time sampler spacing)."""
    d = config.diffusion
    spacing = config.sample.get("timestep_spacing", "trailing") if "sample" in config else "trailing"
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": int(d.num_train_timesteps),
            "beta_start": float(d.beta_start), "beta_end": float(d.beta_end), "beta_schedule": str(d.beta_schedule),
            "prediction_type": str(d.prediction_type), "rescale_betas_zero_snr": bool(d.zero_snr),
            "timestep_spacing": str(spacing), "steps_offset": 0, "clip_sample": False, "set_alpha_to_one": False,
            "thresholding": False}


def settings(trained: Trained, dtype: str) -> dict:
    """The "humandiff" block of model_index.json: what a sampler needs beyond the diffusers components.

    The sampler settings (`sampler`, `num_steps`, `guidance_scale`: the run's `config.sample`, what its held-out
    evaluation uses) are recorded only when the config has them; `humandiff.sample` then uses them as defaults.
    """
    c = trained.config
    sample = c.get("sample", {})
    casts = {"sampler": str, "num_steps": int, "guidance_scale": float}
    return {
        "step": trained.step, "ema": trained.ema, "dtype": dtype, "task": c.get("task", "image"),
        "interaction": c.model.interaction, "pose_injection": c.model.pose_injection,
        "reference_net": "separate" if "reference_unet" in trained.params else "shared",
        "use_ref_pose": bool(c.model.use_ref_pose), "ref_timestep": int(c.diffusion.ref_timestep),
        "prediction_type": c.diffusion.prediction_type, "resolution": list(c.data.resolution),
        **{k: cast(sample[k]) for k, cast in casts.items() if k in sample},
        "motion_modules": bool(getattr(trained.models.unet, "motion_modules", False)),
        "motion_norm": getattr(trained.models.unet, "motion_norm", None),
        "source": trained.workdir,
    }


def model_index(trained: Trained, dtype: str, components: list[str]) -> dict:
    """model_index.json: component -> (library, class), plus the "humandiff" settings and training config."""
    classes = {"unet": ["diffusers", "UNet2DConditionModel"], "reference_unet": ["diffusers", "UNet2DConditionModel"],
               "scheduler": ["diffusers", "DDIMScheduler"],
               "pose_encoder": ["humandiff", "PoseEncoder"], "vae": ["diffusers", "AutoencoderKL"],
               "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
               "motion_adapter": ["diffusers", "MotionAdapter"]}
    index: dict[str, Any] = {"_class_name": "HumanDiffSCDPipeline"}
    try:
        import diffusers  # noqa: PLC0415

        index["_diffusers_version"] = diffusers.__version__
    except ImportError:
        pass
    index.update({k: classes[k] for k in components if k in classes})
    index["humandiff"] = settings(trained, dtype)
    index["humandiff"]["training_config"] = json.loads(trained.config.to_json_best_effort())
    return index


def model_card(trained: Trained, dtype: str, components: list[str]) -> str:
    """README.md for the export folder."""
    s = settings(trained, dtype)
    cfg = json.dumps(json.loads(trained.config.to_json_best_effort()), indent=2)
    lines = [
        "---", "library_name: diffusers", "tags: [humandiff, scd, pose-guided, human-animation]", "---", "",
        "# humandiff SCD model (exported)", "",
        f"Exported from `{trained.workdir}` at step {trained.step} ({'EMA' if trained.ema else 'raw'} weights, "
        f"{dtype}) on {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.", "",
        "Spatially Conditioned Diffusion: the UNet runs once on the reference image and stores every spatial "
        "self-attention's K/V; each target frame then attends to `[K_ref ; K_tgt]`. A stock diffusers UNet needs "
        "humandiff's attention processors for that:", "",
        "```python", "import torch", "from humandiff.torch_scd import animate, load_pipeline", "",
        "pipe = load_pipeline('THIS_FOLDER')",
        "frames = animate(pipe, ref_image, poses, num_steps=20, guidance=3.5)  # [B, F, 3, H, W] in [-1, 1]",
        "```", "",
        "JAX: `python -m humandiff.sample --checkpoint THIS_FOLDER --reference ref.png --poses poses.mp4 --out OUT`.",
        "", "## Contents", "", *[f"- `{c}`" for c in components], "", "## SCD settings", "",
        *[f"- {k}: `{v}`" for k, v in s.items()], "", "## Training config", "", "```json", cfg, "```", "",
    ]
    return "\n".join(lines)


def check_out(out: str, overwrite: bool, protect: str) -> None:
    """Raises ExportError unless `out` may be written (absent, empty, or `overwrite`) and is apart from `protect`."""
    out, protect = os.path.abspath(out), os.path.abspath(protect)
    if protect == out or protect.startswith(out + os.sep) or out.startswith(protect + os.sep):
        raise ExportError(f"--out {out} overlaps the checkpoint {protect}; choose another folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


def write_export(trained: Trained, out: str, *, dtype: str = "fp32", overwrite: bool = False) -> list[str]:
    """Writes the export folder (see the module docstring); returns the components written.

    Raises:
      ExportError: unknown dtype, or `out` exists and is not empty without `overwrite`, or overlaps the checkpoint.
    """
    check_dtype(dtype)
    check_out(out, overwrite, trained.workdir)
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    models, params, m = trained.models, trained.params, trained.config.model
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.export-", dir=parent)
    try:
        write_unet(os.path.join(stage, "unet"), models.unet, params["unet"], dtype)
        components = ["unet", "scheduler", "pose_encoder"]
        if "reference_unet" in params:
            write_unet(os.path.join(stage, "reference_unet"), models.unet, params["reference_unet"], dtype)
            components.insert(1, "reference_unet")
        _write_json(os.path.join(stage, "scheduler", "scheduler_config.json"), scheduler_config(trained.config))
        write_pose_encoder(os.path.join(stage, "pose_encoder"), models.pose_encoder, params["pose_encoder"], dtype,
                           m.pose_injection)
        motion = write_motion(stage, models.unet, params["unet"], dtype)
        components += motion[:1]
        if models.vae is not None:
            write_vae(os.path.join(stage, "vae"), m.vae_dir, params["vae"], dtype)
            components.append("vae")
        if models.image_encoder is not None:
            write_image_encoder(os.path.join(stage, "image_encoder"), m.image_encoder_dir, params["image_encoder"],
                                dtype)
            components.append("image_encoder")
        _write_json(os.path.join(stage, "model_index.json"), model_index(trained, dtype, components))
        with open(os.path.join(stage, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(trained, dtype, components + motion[1:]))
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        if os.path.isdir(stage):
            shutil.rmtree(stage)
    return components + motion[1:]
