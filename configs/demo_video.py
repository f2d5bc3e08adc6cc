"""Embedded demo, stage 2 (video): motion modules on top of a stage-1 demo run; only temporal layers train.

Pixel space 32x32, synthetic clips, no VAE/CLIP. The motion modules' output projections start at zero, so at step 0
the video model equals the stage-1 image model applied to each frame on its own.

    python -m humandiff.train --config configs/demo.py --workdir runs/demo
    python -m humandiff.train --config configs/demo_video.py:stage1=runs/demo --workdir runs/demo_video
    python benchmarks/temporal_consistency.py --workdir runs/demo_video

Args (after the colon): stage1 (stage-1 demo workdir; its `config.json` fixes the architecture: UNet, pose
encoder, diffusion, interaction, reference pose, resolution), runlocal (shrink for tests).
"""

import json
import os

import ml_collections

from humandiff import config_lib

# Fields copied from the stage-1 run's config.json: everything that shapes the parameters or their meaning.
# Module constructor fields are replaced whole; the other groups are merged key by key, so a field added to
# configs/demo.py after the stage-1 run keeps its default (and one since removed is ignored).
STAGE1_KEYS = ("model.unet", "model.pose_encoder", "model.unet_extra", "model.interaction", "model.use_ref_pose",
               "model.pose_injection", "diffusion", "data.resolution", "data.synthetic")
MERGED_KEYS = ("diffusion", "data.synthetic")


def _tuples(value):
    """JSON lists back to the tuples ConfigDict fields hold."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def stage1_config(workdir: str) -> dict:
    """The stage-1 run's resolved config (`<workdir>/config.json`, written by `humandiff.train`)."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            stage1 = json.load(fh)
    except (OSError, ValueError) as e:
        raise config_lib.ConfigError(f"configs/demo_video.py: stage1={workdir!r} needs the stage-1 run's config "
                                     f"{path} (written by humandiff.train); could not read it: {e}") from e
    if not isinstance(stage1, dict) or stage1.get("task") != "image":
        task = stage1.get("task") if isinstance(stage1, dict) else None
        raise config_lib.ConfigError(f"{path}: task={task!r}; stage 2 starts from an image run's config")
    return stage1


def _copy_stage1(c: ml_collections.ConfigDict, stage1: dict, path: str) -> None:
    """Sets the STAGE1_KEYS of `c` from the stage-1 config (read from `path`), replaced or merged as noted above."""
    for key in STAGE1_KEYS:
        node = stage1
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise config_lib.ConfigError(f"{path}: key {key!r} is missing")
            node = node[part]
        *parents, leaf = key.split(".")
        dest = c
        for part in parents:
            dest = dest[part]
        value = _tuples(node)
        if key in MERGED_KEYS:
            if not isinstance(value, dict):
                raise config_lib.ConfigError(f"{path}: {key!r} must be an object, got {value!r}")
            dest[leaf].update({k: v for k, v in value.items() if k in dest[leaf]})
        else:
            dest[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def get_config(arg=None):
    """Returns the demo stage-2 config; see the module docstring for the args."""
    arg = config_lib.parse_arg(arg, stage1="", runlocal=False)
    c = config_lib.load_sibling(__file__, "demo").get_config("runlocal" if arg.runlocal else None)
    if arg.stage1:
        _copy_stage1(c, stage1_config(arg.stage1), os.path.join(arg.stage1, "config.json"))
    c.task = "video"  # clips of data.num_frames target frames sharing one reference cache
    c.total_steps = 300  # optimizer steps (run time: docs/results.md)
    c.batch_size = 2  # global clips per step (2 clips x 8 frames = 16 target frames)
    c.log_every = 20  # steps between metric writes
    c.model.init_checkpoint = arg.stage1  # stage-1 workdir: UNet + pose encoder start from its (EMA) parameters
    c.model.unet_extra.motion_modules = True  # AnimateDiff temporal layers, zero-initialised output projection
    c.model.unet_extra.motion_max_seq_length = 32  # frames covered by the position table
    c.train.form = "two_pass"  # video clips need the cached reference (joint covers images only)
    c.optim.trainable = (r"motion_modules",)  # only temporal layers train; the stage-1 model stays bitwise unchanged
    c.optim.lr = 1e-3  # peak AdamW learning rate (from zero-init in a few hundred steps)
    c.optim.warmup_steps = 20  # linear warmup steps, then constant
    c.optim.schedule = "constant"  # (the image demo decays at its end: wsd)
    c.data.num_frames = 8  # target frames per clip
    c.data.stride = 1  # source frames between consecutive target frames (small motion: consistent appearance)
    c.ckpt.every = 100  # steps between checkpoints
    c.evals.heldout.num_frames = 8  # frames per sampled video (one temporal window)
    c.evals.heldout.num_videos = 4  # held-out identities (as its README numbers were; the image demo samples 16)
    c.sample.sampler, c.sample.num_steps, c.sample.guidance_scale = "ddim", 10, 2.0  # as its README numbers were
    if arg.runlocal:
        c.total_steps, c.batch_size, c.log_every = 4, 1, 2
        c.data.num_frames = c.evals.heldout.num_frames = 3
        c.ckpt.every = 2
    return c
