"""Animate a reference image with a pose sequence, or dress a person in a garment (try-on).

    python -m humandiff.sample --checkpoint CKPT --reference ref.png --poses POSES [--ref-pose POSE] --out OUT
    python -m humandiff.sample --checkpoint CKPT --person person.jpg --garment cloth.jpg --mask mask.png --out OUT

The model's own settings are the defaults: sampler, steps, guidance, resolution, reference timestep, interaction
and reference-pose use, as recorded in a training workdir's config or an export folder's model_index.json;
`--sampler ddim|dpmsolver++|euler` (alias dpm++), `--steps`, `--guidance`, `--size HxW`, `--ref-timestep` override
them. A model without recorded settings (a plain diffusers folder) samples with ddim, 25 steps, guidance 3.5, at
the reference's size. A model trained with the reference pose needs `--ref-pose`.

POSES: a pose video (.mp4, .gif, ...), a folder of pose images (*.png, sorted by name), or keypoints .npy/.json
([T, 133, 3] COCO-WholeBody, rendered with the project's DWPose-style renderer). CKPT: a training workdir (read
directly: nothing is written there or under OUT besides the results) or an export folder in diffusers layout
(unet/, optional vae/, image_encoder/, scheduler/, pose encoder); see `humandiff.checkpoints.loading`.

Try-on (a model trained with task=tryon): the garment is the reference, the person is kept outside the mask (a
mask image, white = generate), `--poses` optionally gives the person's pose (one frame; else none, as in training
on pairs without keypoints).

OUT receives: result.mp4 (H.264), result.gif, frames/frame_XXXX.png, grid.mp4 (reference | pose | result), for
one frame also grid.png, and metadata.json (every setting with where it came from, schedule, compile and sampling
seconds, seconds per frame); results already there are replaced only with --overwrite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from humandiff import cli, config_lib, media
from humandiff.data.pose_input import load_poses

SAMPLERS = config_lib.SAMPLERS  # one spelling everywhere; config_lib.SAMPLER_ALIASES (dpm++) are accepted
OUTPUTS = ("result.mp4", "result.gif", "frames", "grid.mp4", "grid.png", "metadata.json")  # what OUT receives
# Each sampling setting: (its key in `Loaded.settings`, the CLI flag that overrides it, the value for a model that
# does not record it). `Loaded.settings` is the export's model_index.json "humandiff" block, or the same block
# computed from a workdir's config (`checkpoints.export.settings`).
SETTINGS = {
    "sampler": ("sampler", "--sampler", "ddim"),
    "steps": ("num_steps", "--steps", 25),
    "guidance": ("guidance_scale", "--guidance", 3.5),
    "ref_timestep": ("ref_timestep", "--ref-timestep", 0),
    "resolution": ("resolution", "--size", None),  # None: the reference's size
    "use_ref_pose": ("use_ref_pose", "--ref-pose", None),  # None: when a reference pose is given
    "interaction": ("interaction", None, "causal"),
    "task": ("task", None, None),  # None: unknown (any inputs are accepted)
}


def canonical_sampler(name: str) -> str:
    """The one spelling of a sampler name (`config_lib.SAMPLERS`); aliases such as "dpm++" are accepted."""
    return config_lib.SAMPLER_ALIASES.get(name, name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m humandiff.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="humandiff.train workdir (its latest checkpoint, EMA weights when kept) or export folder")
    p.add_argument("--reference", default=None, help="reference image (png/jpg)")
    p.add_argument("--poses", default=None,
                   help="pose video, folder of pose images, or keypoints .npy/.json (try-on: the person's pose)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--person", default=None, help="try-on: image of the person to dress")
    p.add_argument("--garment", default=None, help="try-on: image of the garment (the reference)")
    p.add_argument("--mask", default=None, help="try-on: mask image, white where the garment is generated")
    p.add_argument("--pose-encoder", default=None, help="pose-encoder safetensors (default: in the checkpoint)")
    p.add_argument("--ref-pose", default=None,
                   help="pose image or keypoints of the reference (required by models trained with it)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale, 1: no CFG effect (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default=None, help="HxW or S (multiples of 8); default: the model's training "
                   "resolution, else the reference's size")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: pose video's, else 8)")
    p.add_argument("--sampler", type=canonical_sampler, choices=SAMPLERS, default=None,
                   help="default: the model's")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many pose frames")
    p.add_argument("--window", type=int, default=16, help="frames per model call (temporal window)")
    p.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive windows")
    p.add_argument("--keypoints-size", default=None,
                   help="HxW of the frames the keypoints were extracted from (default: the output size)")
    p.add_argument("--ref-timestep", type=int, default=None,
                   help="timestep of the reference pass (default: the model's training setting, else 0)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickle weight files (.bin/.ckpt)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------ inputs


def _size(size) -> tuple[int, int] | None:
    return media.parse_size(size) if isinstance(size, str) else (None if size is None else tuple(size))


def prepare_inputs(reference: str, poses: str, *, size=None, ref_pose: str | None = None,
                   max_frames: int | None = None, keypoints_size=None, fps: float | None = None) -> tuple[dict, dict]:
    """Reads and validates a reference image and its poses.

    Args:
      reference: reference image file.
      poses: pose video, folder of pose images or keypoints file (`data.pose_input.load_poses`).
      size: (height, width) or "HxW" (None: the reference's size, which must then be a multiple of 8).
      ref_pose: pose image or keypoints of the reference (optional).
      max_frames: use at most this many pose frames.
      keypoints_size: (height, width) or "HxW" of the frames keypoints refer to (None: `size`).
      fps: output frame rate (None: the pose video's, else 8).

    Returns:
      `(model inputs, images)`: `ref_image`, `poses` (and `ref_pose`), batch 1; the uint8 `reference`, `poses`
      (the grid's pose column) and `fps`.
    """
    size = _size(size)
    ref = media.load_image(reference, size)
    if size is None:
        size = ref.shape[:2]
        media.check_size(size[0], size[1], f"reference image {reference} size")
    kp_size = _size(keypoints_size)
    frames, video_fps = load_poses(poses, size, max_frames=max_frames, keypoints_size=kp_size)
    inputs = {"ref_image": media.to_model_image(ref)[None], "poses": media.to_pose_image(frames)[None]}
    if ref_pose:
        pose, _ = load_poses(ref_pose, size, max_frames=1, keypoints_size=kp_size)
        inputs["ref_pose"] = media.to_pose_image(pose[:1])
    return inputs, {"reference": ref, "poses": frames, "fps": fps or video_fps or 8.0}


def load_mask(path: str, size: tuple[int, int]) -> np.ndarray:
    """A try-on mask image as float32 `[H, W, 1]`: 1 where the garment is generated (pixels brighter than half),
    resized with nearest neighbours (as the training data is)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"try-on mask not found: {path}")
    try:
        with Image.open(path) as im:
            mask = im.convert("L").resize((size[1], size[0]), Image.NEAREST)
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read try-on mask {path}: {e}") from e
    mask = (np.asarray(mask, np.float32)[..., None] > 127.0).astype(np.float32)
    if not mask.any():
        raise ValueError(f"try-on mask {path} is black everywhere: nothing to generate (white = generate)")
    return mask


def prepare_tryon(person: str, garment: str, mask: str, *, size=None, poses: str | None = None,
                  keypoints_size=None) -> tuple[dict, dict]:
    """Reads and validates a try-on triple, laid out as the try-on training data is
    (`data.examples.TryOnExampleOp`): the garment is the reference, its pose is blank, the person is kept outside
    the mask.

    Args:
      person, garment, mask: image files (mask: white = generate).
      size: (height, width) or "HxW" (None: the person's size, which must then be a multiple of 8).
      poses: the person's pose (image or keypoints; first frame), or None for a blank pose.
      keypoints_size: (height, width) or "HxW" of the frame keypoints refer to (None: `size`).

    Returns:
      `(model inputs, images)` as `prepare_inputs`; the grid's pose column shows the person with the masked part
      greyed out.
    """
    size = _size(size)
    person_img = media.load_image(person, size, "person image")
    if size is None:
        size = person_img.shape[:2]
        media.check_size(size[0], size[1], f"person image {person} size")
    cloth = media.load_image(garment, size, "garment image")
    m = load_mask(mask, size)
    if poses:
        pose, _ = load_poses(poses, size, max_frames=1, keypoints_size=_size(keypoints_size))
        pose = pose[:1]
    else:
        pose = np.zeros((1, *size, 3), np.uint8)
    inputs = {"ref_image": media.to_model_image(cloth)[None], "poses": media.to_pose_image(pose)[None],
              "ref_pose": np.zeros((1, *size, 3), np.float32),
              "tryon_person": media.to_model_image(person_img)[None], "tryon_mask": m[None]}
    shown = np.where(m > 0, np.uint8(128), person_img)[None]
    return inputs, {"reference": cloth, "poses": shown, "fps": 8.0}


# ----------------------------------------------------------------------------------------------------- library


def load(checkpoint: str, *, pose_encoder: str | None = None, allow_pickle: bool = False):
    """The model to animate with (`checkpoints.loading.load_trained`): a training workdir or an export folder."""
    from humandiff.checkpoints import loading  # noqa: PLC0415  (jax: after argument parsing, --help stays fast)

    return loading.load_trained(checkpoint, pose_encoder=pose_encoder, allow_pickle=allow_pickle)


def resolve_settings(loaded, **given) -> dict[str, dict]:
    """Every setting of `SETTINGS` as `{"value": v, "from": f}`: a value given here (not None) wins ("argument"),
    then the one the model records ("model"), then the fallback ("default").

    Raises:
      ValueError: an unknown sampler name (given or recorded).
    """
    unknown = set(given) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}; expected some of {sorted(SETTINGS)}")
    recorded = loaded.settings
    out = {}
    for name, (key, _, fallback) in SETTINGS.items():
        if given.get(name) is not None:
            out[name] = {"value": given[name], "from": "argument"}
        elif recorded.get(key) is not None:
            out[name] = {"value": recorded[key], "from": "model"}
        else:
            out[name] = {"value": fallback, "from": "default"}
    sampler = out["sampler"]
    sampler["value"] = canonical_sampler(str(sampler["value"]))
    if sampler["value"] not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler['value']!r} (from the {sampler['from']}); expected one of "
                         f"{', '.join(SAMPLERS)}")
    if out["resolution"]["value"] is not None:
        out["resolution"]["value"] = [int(v) for v in out["resolution"]["value"]]
    return out


def input_size(loaded, size=None, native: tuple[int, int] | None = None) -> tuple[tuple[int, int], str]:
    """`(size, where from)` of the images to sample: `size` if given ("argument"), else the model's training
    resolution ("model"), else `native` (the reference's own size, "reference"), which must be a multiple of 8."""
    s = resolve_settings(loaded, resolution=_size(size))["resolution"]
    if s["value"] is not None:
        return tuple(s["value"]), s["from"]
    if native is None:
        raise ValueError("the model records no resolution: give a size")
    media.check_size(native[0], native[1], "reference image size")
    return tuple(native), "reference"


def check_inputs(loaded, inputs: dict) -> None:
    """Raises ValueError (one line, naming the flag) for inputs this model cannot sample from: no reference pose
    for a model trained with one, or try-on inputs for a model trained for another task. `animate` checks too;
    call it first to fail before anything else is shown."""
    s = resolve_settings(loaded)
    _use_ref_pose(s, inputs)
    _check_task(s, inputs)


def _use_ref_pose(settings: dict, inputs: dict) -> dict:
    """The model's use_ref_pose when it records one (a model trained with it needs a reference pose), else
    whether a reference pose is given."""
    s = settings["use_ref_pose"]
    if s["from"] != "model":
        return {"value": "ref_pose" in inputs, "from": "argument" if "ref_pose" in inputs else "default"}
    if s["value"] and "ref_pose" not in inputs:
        raise ValueError("this model was trained with the reference pose (use_ref_pose=True) and needs it: pass "
                         "--ref-pose with the pose image or keypoints of the reference image")
    return s


def _check_task(settings: dict, inputs: dict) -> None:
    task = settings["task"]["value"]
    if "tryon_person" in inputs and task not in (None, "tryon"):
        raise ValueError(f"try-on (--person/--garment/--mask) needs a model trained for try-on (task=tryon); this "
                         f"one was trained for task={task!r}: animate it with --reference and --poses")


def animate(loaded, inputs: dict, reference: np.ndarray, *, steps: int | None = None,
            guidance: float | None = None, sampler: str | None = None, seed: int = 0, eta: float = 0.0,
            window: int = 16, overlap: int = 4, ref_timestep: int | None = None,
            on_step=None) -> tuple[np.ndarray, dict]:
    """Samples one video (or one try-on image): what the CLI, the notebook and the web demo call.

    Args:
      loaded: `load(...)`.
      inputs: `prepare_inputs`' or `prepare_tryon`'s model inputs, batch 1.
      reference: the reference (try-on: the garment) as uint8 `[H, W, 3]` (the image encoder's input).
      steps, guidance, sampler: the sampler's settings (None: the model's, see `resolve_settings`).
      seed, eta: noise seed and DDIM stochasticity.
      window, overlap: frames per model call and frames shared by consecutive calls.
      ref_timestep: timestep of the reference pass (None: the model's training setting, else 0).
      on_step: called with the step index after every denoising step (a progress bar).

    Returns:
      `(frames uint8 [F, H, W, 3], metadata)`: every setting with where it came from (`settings`), the
      sampler's details, and the seconds spent compiling and sampling.

    Raises:
      ValueError: a model trained with the reference pose without `inputs["ref_pose"]`, or try-on inputs for a
        model trained for another task.
    """
    import jax  # noqa: PLC0415

    from humandiff.diffusion import pipeline, samplers  # noqa: PLC0415

    s = resolve_settings(loaded, steps=steps, guidance=guidance, sampler=sampler, ref_timestep=ref_timestep)
    s["use_ref_pose"] = _use_ref_pose(s, inputs)
    _check_task(s, inputs)
    size = [int(v) for v in inputs["ref_image"].shape[1:3]]
    s["resolution"] = {"value": size, "from": "model" if s["resolution"]["value"] == size else "inputs"}
    inputs = dict(inputs)
    if loaded.models.image_encoder is not None:
        inputs["clip_image"] = loaded.models.clip_input(reference[None])
    cfg = pipeline.SamplingConfig(
        ref_timestep=s["ref_timestep"]["value"], window=window, overlap=min(overlap, window - 1),
        use_ref_pose=s["use_ref_pose"]["value"],
        # full interaction: the reference sees the target, so its K/V cannot be cached; recompute every step
        mode="joint" if s["interaction"]["value"] == "full" else "cached")
    schedule = samplers.make_sampler(loaded.schedule, s["sampler"]["value"], s["steps"]["value"],
                                     spacing=loaded.spacing, steps_offset=loaded.steps_offset, eta=eta)
    generate = pipeline.make_generator(loaded.models, cfg, on_step=on_step)
    t0 = time.perf_counter()
    run = generate.compile_ahead(loaded.params, schedule, inputs, jax.random.key(seed), s["guidance"]["value"])
    t1 = time.perf_counter()
    out = jax.block_until_ready(run())
    t2 = time.perf_counter()
    frames = media.to_uint8(np.asarray(out)[0])
    n = int(frames.shape[0])
    metadata = {
        "sources": loaded.sources, "num_frames": n, "size": list(frames.shape[1:3]), "seed": seed,
        "settings": s, "steps": s["steps"]["value"], "guidance": s["guidance"]["value"], "sampler": schedule.kind,
        "eta": eta, "spacing": loaded.spacing, "schedule": dataclasses.asdict(loaded.schedule),
        "sampling": {k: getattr(cfg, k) for k in ("mode", "ref_timestep", "window", "overlap", "fusion",
                                                    "use_ref_pose", "uncond_drop_ref", "uncond_drop_embed",
                                                    "uncond_drop_pose")},
        "seconds": {"compile": round(t1 - t0, 3), "sample": round(t2 - t1, 3),
                    "sample_per_frame": round((t2 - t1) / n, 4)},
        "device": str(jax.devices()[0]),
    }
    return frames, metadata


# ---------------------------------------------------------------------------------------------------------- CLI


def write_outputs(out: str, frames: np.ndarray, images: dict, metadata: dict) -> dict:
    """Writes result.mp4, result.gif, frames/, grid.mp4 (and grid.png for one frame), metadata.json; returns
    their paths."""
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, v) for k, v in
             {"mp4": "result.mp4", "gif": "result.gif", "grid": "grid.mp4", "metadata": "metadata.json"}.items()}
    fps = images["fps"]
    if os.path.isdir(os.path.join(out, "frames")):  # --overwrite: no stale frame of a longer earlier run stays
        shutil.rmtree(os.path.join(out, "frames"))
    media.write_mp4(paths["mp4"], frames, fps)
    media.write_gif(paths["gif"], frames, fps)
    paths["frames"] = os.path.join(out, "frames")
    media.write_frames(paths["frames"], frames)
    grid = media.grid(images["reference"], images["poses"], frames)
    media.write_mp4(paths["grid"], grid, fps)
    if len(frames) == 1:
        paths["grid_png"] = os.path.join(out, "grid.png")
        media.write_image(paths["grid_png"], grid[0])
    elif os.path.exists(os.path.join(out, "grid.png")):  # --overwrite of an image run: not this run's grid
        os.remove(os.path.join(out, "grid.png"))
    with open(paths["metadata"], "w", encoding="utf-8") as f:
        json.dump({**metadata, "outputs": paths}, f, indent=2)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring); returns 0, or exits 2 on bad input (`humandiff.cli`)."""
    args = parse_args(argv)
    with cli.errors(args.debug):
        return _run(args)


def _check_mode(args: argparse.Namespace) -> bool:
    """True for try-on; raises ValueError for a mix of the two modes' flags or a missing one."""
    tryon = {"--person": args.person, "--garment": args.garment, "--mask": args.mask}
    if any(v is not None for v in tryon.values()):
        missing = [k for k, v in tryon.items() if v is None]
        if missing:
            raise ValueError(f"try-on needs --person, --garment and --mask; missing {', '.join(missing)}")
        if args.reference is not None:
            raise ValueError("--reference is for animation; in try-on the garment (--garment) is the reference")
        return True
    missing = [k for k, v in {"--reference": args.reference, "--poses": args.poses}.items() if v is None]
    if missing:
        raise ValueError(f"missing {' and '.join(missing)} (to animate: --reference and --poses; for try-on: "
                         "--person, --garment and --mask)")
    return False


def prepare(args: argparse.Namespace, tryon: bool, size) -> tuple[dict, dict]:
    """`prepare_tryon` or `prepare_inputs` of the CLI's flags `args` at `size` (the CLI's and the web demo's)."""
    if tryon:
        return prepare_tryon(args.person, args.garment, args.mask, size=size, poses=args.poses,
                             keypoints_size=args.keypoints_size)
    return prepare_inputs(args.reference, args.poses, size=size, ref_pose=args.ref_pose, max_frames=args.max_frames,
                          keypoints_size=args.keypoints_size, fps=args.fps)


def _native_size(args: argparse.Namespace, tryon: bool) -> tuple[int, int]:
    """(height, width) of the reference image (try-on: the person) as the file has it."""
    return media.load_image(args.person if tryon else args.reference, None,
                            "person image" if tryon else "reference image").shape[:2]


def model_inputs(loaded, args: argparse.Namespace, tryon: bool = False, *, native: tuple[int, int] | None = None,
                 read: tuple | None = None) -> tuple[dict, dict, tuple[int, int], str]:
    """The inputs of the CLI's flags `args` at the size the model samples (`input_size`: --size, else the model's
    resolution, else the reference's own), checked against the model (`check_inputs`): the CLI's and the web
    demo's one path from files to `animate`.

    Args:
      native: the reference's own size, when already read.
      read: `(size, inputs, images)` prepared earlier (the CLI validates its files before loading the weights),
        reused when `size` is the one the model samples.

    Returns:
      `(inputs, images, size, where the size came from)`.
    """
    flag_size = media.parse_size(args.size) if args.size else None
    size, size_from = input_size(loaded, flag_size, native or _native_size(args, tryon))
    inputs, images = read[1:] if read is not None and tuple(read[0]) == tuple(size) else prepare(args, tryon, size)
    check_inputs(loaded, inputs)
    return inputs, images, size, size_from


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415

    tryon = _check_mode(args)
    if args.poses is not None and not os.path.exists(args.poses):
        raise FileNotFoundError(f"poses not found: {args.poses}")
    cli.refuse_existing([os.path.join(args.out, name) for name in OUTPUTS], args.overwrite)
    t0 = time.perf_counter()
    # The cheap inputs are validated before the weights load, at --size or near the image's own size; they are
    # read again at the model's resolution when that differs.
    native = _native_size(args, tryon)
    first = media.parse_size(args.size) if args.size else (max(8, native[0] // 8 * 8), max(8, native[1] // 8 * 8))
    read = (first, *prepare(args, tryon, first))
    loaded = load(args.checkpoint, pose_encoder=args.pose_encoder, allow_pickle=args.allow_pickle)
    inputs, images, size, size_from = model_inputs(loaded, args, tryon, native=native, read=read)
    t_load = time.perf_counter() - t0
    given = {"steps": args.steps, "guidance": args.guidance, "sampler": args.sampler,
             "ref_timestep": args.ref_timestep}
    steps = resolve_settings(loaded, **given)["steps"]["value"]
    n = inputs["poses"].shape[1]
    print(f"compiling the sampler for {n} frame(s) of {size[0]}x{size[1]}, then {steps} steps", file=sys.stderr)
    bar = tqdm(total=steps, desc=f"sampling {n} frame(s)", unit="step", file=sys.stderr)
    try:
        frames, metadata = animate(loaded, inputs, images["reference"], **given, seed=args.seed, eta=args.eta,
                                   window=args.window, overlap=args.overlap, on_step=lambda i: bar.update(1))
    finally:
        bar.close()
    for name, s in metadata["settings"].items():  # where a value came from, in the user's words: the flag
        if s["from"] == "argument":
            s["from"] = SETTINGS[name][1]
    metadata["settings"]["resolution"]["from"] = {"argument": "--size"}.get(size_from, size_from)
    inputs_used = {"person": args.person, "garment": args.garment, "mask": args.mask} if tryon else {
        "reference": args.reference}
    metadata = {"checkpoint": args.checkpoint, "mode": "tryon" if tryon else "animate", **inputs_used,
                "poses": args.poses, "ref_pose": args.ref_pose, "fps": images["fps"], **metadata}
    metadata["seconds"] = {"load": round(t_load, 3), **metadata["seconds"]}
    paths = write_outputs(args.out, frames, images, metadata)
    sec = metadata["seconds"]
    print(f"{n} frame(s) -> {paths['mp4']} (compile {sec['compile']:.1f} s, sampling {sec['sample']:.1f} s, "
          f"{sec['sample_per_frame']:.2f} s/frame)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
