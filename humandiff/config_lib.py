"""Config loading and validation for humandiff (big_vision style).

A config file `configs/x.py` defines `get_config(arg: str | None) -> ConfigDict`. The string after the colon in
`--config configs/x.py:key=val,flag` reaches `get_config`, which turns it into a typed ConfigDict of arguments with
`parse_arg`. Individual fields are overridden on the command line with `--config.optim.lr=3e-5` through
`ml_collections.config_flags` (see `humandiff/train.py`), or programmatically with `load(spec, overrides)`.

`validate(config)` checks every value that can be checked before anything is built or compiled, and raises a
`ConfigError` naming the key and the bad value. Checks that need the model's parameter paths (a trainable/frozen
regex that matches nothing) live in `humandiff.training.optim.trainable_mask`, which runs on `jax.eval_shape`
output, still before compilation.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
import re
from typing import Any, Iterable, Mapping

import ml_collections

INTERACTIONS = ("causal", "full")
PREDICTION_TYPES = ("epsilon", "v_prediction")
SAMPLERS = ("ddim", "dpmsolver++", "euler")  # the one spelling of each sampler (configs, CLI, metadata)
SAMPLER_ALIASES = {"dpm++": "dpmsolver++", "dpm": "dpmsolver++", "dpmpp": "dpmsolver++"}  # accepted, never written
TRAINING_FORMS = ("two_pass", "joint")
REFERENCE_NETS = ("shared", "separate")
POSE_INJECTIONS = ("conv_in", "input")
COMPUTE_DTYPES = ("float32", "bfloat16")
NAN_POLICIES = ("skip", "stop")
BETA_SCHEDULES = ("scaled_linear", "linear")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
LR_SCHEDULES = ("constant", "cosine", "wsd")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "interpret")
MESH_AXES = ("data", "fsdp", "tensor")
SHARDING_MODES = ("logical", "regex")
# Logical names of parameter dimensions (humandiff.training.logical_axes documents each one).
LOGICAL_AXES = ("conv_h", "conv_w", "conv_in", "conv_out", "embed", "heads", "mlp", "temb", "norm", "pos")
DATA_SOURCES = ("synthetic", "tfds")
TASKS = ("image", "video", "tryon")
# Fields of each evaluator type in config.evals (humandiff.training.evals.EVALUATORS); every entry has `type`.
EVAL_FIELDS = {"heldout": ("every", "split", "num_videos", "num_frames", "seed"),
               "loss": ("every", "split", "num_batches", "seed")}
# (key, allowed values) of every enumerated config field, checked in this order by `validate`.
CHOICES = (("task", TASKS), ("model.interaction", INTERACTIONS), ("model.reference_net", REFERENCE_NETS),
           ("model.pose_injection", POSE_INJECTIONS),
           ("model.attention_impl", ATTENTION_IMPLS), ("diffusion.prediction_type", PREDICTION_TYPES),
           ("diffusion.beta_schedule", BETA_SCHEDULES), ("train.form", TRAINING_FORMS),
           ("train.compute_dtype", COMPUTE_DTYPES), ("train.nan_policy", NAN_POLICIES), ("sample.sampler", SAMPLERS),
           ("optim.schedule", LR_SCHEDULES), ("sample.timestep_spacing", TIMESTEP_SPACINGS),
           ("data.source", DATA_SOURCES))


class ConfigError(ValueError):
    """A config value that cannot work, named by its dotted key."""


def parse_arg(arg: str | None, lazy: bool = False, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `"key=val,flag,key2=val2"` into a ConfigDict typed after `defaults`.

    A bare `flag` sets a boolean default to True. Values are converted to the type of their default (bool accepts
    true/false/1/0/yes/no; tuples are written `a|b|c`). Unknown keys are an error unless `lazy` is True, in which
    case they are kept as strings or Python literals.

    Args:
        arg: the string after the colon of `--config file.py:<arg>`, or None/"".
        lazy: accept keys not present in `defaults`.
        **defaults: argument names and default values.

    Returns:
        A ConfigDict holding every default, overridden by `arg`.

    Raises:
        ConfigError: unknown key or a value that does not convert.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key = key.strip()
        if key not in defaults and not lazy:
            raise ConfigError(f"config arg {key!r} is unknown; known args: {sorted(defaults)}")
        default = defaults.get(key)
        if not sep:
            if default is not None and not isinstance(default, bool):
                raise ConfigError(f"config arg {key!r} needs a value (key=value); only booleans may be bare flags")
            out[key] = True
            continue
        out[key] = _convert(key, raw.strip(), default)
    return out


def _convert(key: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config arg {key}={raw!r}: expected a boolean")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return int(raw) if isinstance(default, int) else float(raw)
        except ValueError as e:
            raise ConfigError(f"config arg {key}={raw!r}: expected {type(default).__name__}") from e
    if isinstance(default, tuple):
        return tuple(_convert(key, x, default[0]) if default else x for x in raw.split("|") if x)
    if isinstance(default, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def load(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Loads `"path/to/config.py[:arg]"` and applies dotted-key overrides (as `--config.a.b=v` would).

    Args:
        spec: config file path, optionally followed by `:` and the `get_config` argument.
        overrides: `{"optim.lr": 1e-4, ...}`; each key must already exist in the config.

    Returns:
        The config, unlocked.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"humandiff_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg or None)
    for key, value in (overrides or {}).items():
        set_dotted(config, key, value)
    return config


def load_sibling(config_file: str, name: str):
    """Imports the config module `name` that sits next to `config_file` (variants import their base this way)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    module_spec = importlib.util.spec_from_file_location(f"humandiff_config_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf key of `config` as "a.b.c" (what `--config.a.b.c=v` can set)."""
    keys = []
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += dotted_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def check_key(config: ml_collections.ConfigDict, key: str) -> None:
    """Raises `ConfigError` naming `key` and the nearest existing key when "a.b.c" is not a leaf of `config`."""
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if isinstance(node, ml_collections.ConfigDict) and leaf in node:
        return
    nearest = difflib.get_close_matches(key, dotted_keys(config), n=1, cutoff=0.6)
    hint = f"; did you mean {nearest[0]}?" if nearest else ""
    raise ConfigError(f"unknown config key in --config.{key}: the config has no {key}{hint}")


def set_dotted(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Sets `config.a.b.c = value` for key "a.b.c"; the key must exist (`check_key`)."""
    check_key(config, key)
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"config.{key}={value!r}: {why}")


def _one_of(config, key: str, allowed: Iterable[str]) -> None:
    value = _get(config, key)
    if value not in tuple(allowed):
        _fail(key, value, f"expected one of {tuple(allowed)}")


def _get(config, key: str) -> Any:
    node = config
    for name in key.split("."):
        if name not in node:
            raise ConfigError(f"config.{key} is missing (needed by humandiff.train)")
        node = node[name]
    return node


def _positive(config, key: str, allow_zero: bool = False) -> None:
    value = _get(config, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        _fail(key, value, "expected a number")
    if value < 0 or (value == 0 and not allow_zero):
        _fail(key, value, "must be >= 0" if allow_zero else "must be > 0")


def _fraction(config, key: str) -> None:
    value = _get(config, key)
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        _fail(key, value, "must be in [0, 1]")


def _regexes(config, key: str) -> None:
    value = _get(config, key)
    if isinstance(value, str):
        _fail(key, value, "expected a tuple of regexes, not a string")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as e:
            _fail(key, pattern, f"invalid regex: {e}")


def _sharding(config) -> None:
    """`config.sharding`: mode, regex rules and logical rules (names and mesh axes)."""
    _one_of(config, "sharding.mode", SHARDING_MODES)
    for i, rule in enumerate(config.sharding.rules):
        if len(rule) != 2:
            _fail(f"sharding.rules[{i}]", rule, "expected (regex, strategy)")
        try:
            re.compile(rule[0])
        except re.error as e:
            _fail(f"sharding.rules[{i}]", rule[0], f"invalid regex: {e}")
        if rule[1] not in ("fsdp", "replicate", "tensor"):
            _fail(f"sharding.rules[{i}]", rule[1], "strategy must be fsdp, replicate or tensor")
    replicated, sharded = set(), set()
    for i, rule in enumerate(_get(config, "sharding.logical_rules")):
        if isinstance(rule, str) or len(rule) != 2:
            _fail(f"sharding.logical_rules[{i}]", rule, "expected (logical_name, mesh_axis or None)")
        name, axis = rule
        if name not in LOGICAL_AXES:
            _fail(f"sharding.logical_rules[{i}]", name, f"unknown logical axis name; known: {LOGICAL_AXES}")
        if axis is not None and axis not in MESH_AXES:
            _fail(f"sharding.logical_rules[{i}]", axis, f"unknown mesh axis; expected one of {MESH_AXES} or None")
        (replicated if axis is None else sharded).add(name)
        if name in replicated and name in sharded:
            _fail(f"sharding.logical_rules[{i}]", rule, f"{name!r} is mapped both to None and to a mesh axis")


def mesh_shape(config, num_devices: int) -> tuple[int, ...]:
    """Resolves `config.mesh.shape` (one entry may be -1) against the device count, or raises ConfigError."""
    shape = tuple(int(x) for x in config.mesh.shape)
    if len(shape) != len(MESH_AXES):
        _fail("mesh.shape", shape, f"expected {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(x == 0 or x < -1 for x in shape):
        _fail("mesh.shape", shape, "entries must be positive, with at most one -1")
    known = math.prod(x for x in shape if x != -1)
    if -1 in shape:
        if num_devices % known:
            _fail("mesh.shape", shape, f"{num_devices} devices are not divisible by the fixed axes' product {known}")
        shape = tuple(num_devices // known if x == -1 else x for x in shape)
    if math.prod(shape) != num_devices:
        _fail("mesh.shape", shape, f"product {math.prod(shape)} does not match the device count {num_devices}")
    return shape


def _data_mix(config) -> None:
    """`data.name` (one dataset or a comma-separated mixture) and `data.weights`: known names, one positive
    weight per name, and every dataset built under `data.data_dir`."""
    from humandiff.data import sources  # light (json, os, numpy)

    try:
        mix = sources.parse_mix(config.data.name, config.data.get("weights", ()))
    except ValueError as e:
        raise ConfigError(f"config.{e}") from e
    if config.task == "tryon" and len(mix) > 1:
        _fail("data.name", config.data.name, "the try-on stage reads one VITON-HD dataset, not a mixture")
    names = [n for n, _ in mix]
    try:
        if len(names) > 1:
            sources.resolve_mix_dirs(config.data.data_dir, names)
        else:
            sources.resolve_dataset_dir(config.data.data_dir, names[0])
    except FileNotFoundError as e:
        raise ConfigError(f"config.data.name={config.data.name!r}: {e}") from e


def cpu_devices(config: ml_collections.ConfigDict) -> int:
    """`config.mesh.cpu_devices` (0 when absent): JAX devices to split a CPU-only host into, or raises ConfigError."""
    count = config.mesh.get("cpu_devices", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        _fail("mesh.cpu_devices", count, "must be an integer >= 0 (0 = JAX's default, one CPU device)")
    return count


def validate_evals(config: ml_collections.ConfigDict) -> None:
    """Checks `config.evals`: each entry's type, that it has exactly its type's fields, and their values."""
    for name, entry in _get(config, "evals").items():
        key = f"evals.{name}"
        kind = entry.get("type") if isinstance(entry, (Mapping, ml_collections.ConfigDict)) else None
        if kind not in EVAL_FIELDS:
            _fail(f"{key}.type", kind, f"expected one of {tuple(EVAL_FIELDS)}")
        fields = set(entry) - {"type"}
        for field in sorted(fields ^ set(EVAL_FIELDS[kind])):
            why = "is not a field of" if field in fields else "is missing; it is a field of"
            raise ConfigError(f"config.{key}.{field} {why} type {kind!r} (fields: {', '.join(EVAL_FIELDS[kind])})")
        for field in ("num_videos", "num_frames", "num_batches"):
            if field in entry:
                _positive(config, f"{key}.{field}")
        _positive(config, f"{key}.every", allow_zero=True)
        for field in ("every", "num_videos", "num_frames", "num_batches", "seed"):
            if field in entry and (not isinstance(entry[field], int) or isinstance(entry[field], bool)):
                _fail(f"{key}.{field}", entry[field], "expected an integer")
        if not isinstance(entry.split, str) or not entry.split:
            _fail(f"{key}.split", entry.split, "expected a split name")
        if config.data.source == "synthetic":
            from humandiff.data.synthetic import SPLITS  # noqa: PLC0415
            if entry.split not in SPLITS:
                _fail(f"{key}.split", entry.split, f"the synthetic source has the splits {SPLITS}")
        if kind == "heldout" and config.task == "tryon" and entry.num_frames != 1:
            _fail(f"{key}.num_frames", entry.num_frames, "try-on samples images (1 frame)")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Rejects bad values before anything is built, naming the key and the value.

    Args:
        config: a training config (see configs/*.py).
        num_devices: global device count; when given, the mesh shape and the batch divisibility are checked.

    Raises:
        ConfigError: the first bad value found.
    """
    for key, allowed in CHOICES:
        _one_of(config, key, allowed)
    for key in ("optim.lr", "total_steps", "batch_size", "data.num_frames", "data.stride",
                "diffusion.num_train_timesteps", "log_every", "ckpt.every", "ckpt.keep", "sample.num_steps"):
        _positive(config, key)
    for key in ("optim.warmup_steps", "optim.weight_decay", "optim.grad_clip", "diffusion.noise_offset",
                "diffusion.snr_gamma", "sample.guidance_scale"):
        _positive(config, key, allow_zero=True)
    if config.optim.schedule == "wsd":
        _positive(config, "optim.decay_steps")
    for key in ("optim.ema_decay", "data.drop_prob", "optim.b1", "optim.b2"):
        _fraction(config, key)
    ref_t, n_t = _get(config, "diffusion.ref_timestep"), _get(config, "diffusion.num_train_timesteps")
    if not isinstance(ref_t, int) or not 0 <= ref_t < n_t:
        _fail("diffusion.ref_timestep", ref_t, f"must be an integer in [0, {n_t})")
    if config.diffusion.beta_start <= 0 or config.diffusion.beta_end <= config.diffusion.beta_start:
        _fail("diffusion.beta_end", config.diffusion.beta_end, "need 0 < beta_start < beta_end")
    _regexes(config, "optim.trainable")
    _regexes(config, "optim.frozen")
    _sharding(config)
    if config.task == "video" and config.data.num_frames < 2:
        _fail("data.num_frames", config.data.num_frames, "the video stage needs at least 2 frames")
    if config.train.form == "joint" and config.data.num_frames != 1:
        _fail("train.form", config.train.form, "the joint form covers images only; use two_pass for video")
    if config.model.interaction == "full" and config.train.form != "joint":
        _fail("train.form", config.train.form, "model.interaction='full' lets the reference see the target, which "
              "the two-pass form (a reference K/V cache) cannot express; use train.form='joint'")
    if config.task == "tryon" and config.data.num_frames != 1:
        _fail("data.num_frames", config.data.num_frames, "the try-on stage trains on images (1 frame)")
    res = tuple(config.data.resolution)
    if len(res) != 2 or min(res) <= 0:
        _fail("data.resolution", res, "expected positive (height, width)")
    if config.task == "tryon" and config.data.source != "tfds":
        _fail("data.source", config.data.source, "the try-on stage reads a built VITON-HD dataset (tfds)")
    cache = config.train.get("compilation_cache_dir", "")
    if not isinstance(cache, str):
        _fail("train.compilation_cache_dir", cache, "expected a folder path (relative: under --workdir) or '' (off)")
    chunk = config.model.get("attention_query_chunk", 0)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
        _fail("model.attention_query_chunk", chunk, "must be an integer >= 0 (0 = all queries at once)")
    coords = config.model.pose_encoder.get("coord_channels", False)
    if not isinstance(coords, bool):
        _fail("model.pose_encoder.coord_channels", coords, "must be True or False")
    if config.data.source == "synthetic":
        from humandiff.data.synthetic import MAX_TRAVEL  # noqa: PLC0415
        travel = config.data.synthetic.travel
        if not 0.0 <= travel <= MAX_TRAVEL:
            _fail("data.synthetic.travel", travel, f"must be in [0, {MAX_TRAVEL}] (a fraction of the frame width)")
    from humandiff.data.loader import reference_crop_problem  # noqa: PLC0415

    why = reference_crop_problem(config.data.get("reference_crop_scale", ()), config.task)
    if why:
        _fail("data.reference_crop_scale", tuple(config.data.reference_crop_scale), why)
    if config.data.source == "tfds" and not config.data.data_dir:
        _fail("data.data_dir", config.data.data_dir, "data.source='tfds' needs the folder data_pipelines.build wrote")
    if config.data.source == "tfds":
        _data_mix(config)
    if config.model.vae_dir and not os.path.isdir(config.model.vae_dir):
        _fail("model.vae_dir", config.model.vae_dir, "folder does not exist")
    for key in ("model.unet_dir", "model.image_encoder_dir", "model.motion_modules_path", "model.init_checkpoint"):
        value = _get(config, key)
        if value and not os.path.exists(value):
            _fail(key, value, "path does not exist")
    if config.model.motion_modules_path and not config.model.unet_dir:
        _fail("model.motion_modules_path", config.model.motion_modules_path,
              "motion modules are loaded together with the base UNet: set model.unet_dir too")
    validate_evals(config)
    cpu_devices(config)
    if num_devices is not None:
        shape = mesh_shape(config, num_devices)
        batch_shards = shape[0] * shape[1]
        if config.batch_size % batch_shards:
            _fail("batch_size", config.batch_size,
                  f"not divisible by the data*fsdp mesh size {batch_shards} (mesh {shape}, {num_devices} devices)")


def shrink_for_local(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `runlocal` shrink shared by every config: a tiny random UNet in pixel space on synthetic data.

    Keeps the stage's structure (task, frame count capped at 4, training form, interaction, losses) so that the
    same code path runs on a laptop CPU in seconds per step.
    """
    c = config
    c.model.unet = ml_collections.ConfigDict(dict(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16,), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8))
    c.model.pose_encoder = ml_collections.ConfigDict(dict(block_out_channels=(16,), coord_channels=False))
    c.model.unet_dir = c.model.vae_dir = c.model.image_encoder_dir = c.model.motion_modules_path = ""
    c.model.init_checkpoint = ""
    c.optim.trainable, c.optim.frozen = (".*",), ()
    if c.task != "tryon":
        c.data.source, c.data.data_dir, c.data.name = "synthetic", "", ""
    c.data.resolution = (16, 16)
    c.data.synthetic.update(dict(num_videos=8, num_frames=16, height=16, width=16))
    c.data.num_frames = min(c.data.num_frames, 4)
    c.data.stride = 1
    c.data.num_threads, c.data.prefetch, c.data.num_workers = 0, 0, 0
    c.batch_size, c.total_steps, c.log_every = 4, 20, 5
    c.ckpt.every, c.sample.num_steps = 10, 4
    for entry in c.evals.values():
        entry.every = 0
        if entry.type == "heldout":
            entry.num_videos, entry.num_frames = 2, 1 if c.task == "tryon" else 2
        if entry.type == "loss":
            entry.num_batches = 1
    c.mesh.shape = (-1, 1, 1)
    return c
