"""Animate a reference image with a pose sequence.

    python -m humandiff.sample --checkpoint CKPT --reference ref.png --poses POSES --out OUT \
        [--steps 25] [--guidance 3.5] [--seed 0] [--size 512x512] [--fps 8] [--sampler ddim|dpm++|euler]

POSES: a pose video (.mp4, .gif, ...), a folder of pose images (*.png, sorted by name), or keypoints .npy/.json
([T, 133, 3] COCO-WholeBody, rendered with the project's DWPose-style renderer). CKPT: a training workdir (read
directly: nothing is written there or under OUT besides the results) or an export folder in diffusers layout
(unet/, optional vae/, image_encoder/, scheduler/, pose encoder); see `humandiff.checkpoints.loading`.

OUT receives: result.mp4 (H.264), result.gif, frames/frame_XXXX.png, grid.mp4 (reference | pose | result) and
metadata.json (arguments, sampler, schedule, timings); results already there are replaced only with --overwrite.
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

from humandiff import cli, media
from humandiff.data.pose_input import load_poses

SAMPLERS = ("ddim", "dpm++", "euler")
OUTPUTS = ("result.mp4", "result.gif", "frames", "grid.mp4", "metadata.json")  # what OUT receives


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m humandiff.sample", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="humandiff.train workdir (its latest checkpoint, EMA weights when kept) or export folder")
    p.add_argument("--reference", required=True, help="reference image (png/jpg)")
    p.add_argument("--poses", required=True, help="pose video, folder of pose images, or keypoints .npy/.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--pose-encoder", default=None, help="pose-encoder safetensors (default: in the checkpoint)")
    p.add_argument("--ref-pose", default=None, help="pose image or keypoints of the reference (optional)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps")
    p.add_argument("--guidance", type=float, default=3.5, help="classifier-free guidance scale (1: no CFG effect)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default=None, help="HxW or S (multiples of 8); default: the reference's size")
    p.add_argument("--fps", type=float, default=None, help="output frame rate (default: pose video's, else 8)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many pose frames")
    p.add_argument("--window", type=int, default=16, help="frames per model call (temporal window)")
    p.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive windows")
    p.add_argument("--keypoints-size", default=None, help="HxW of the frames the keypoints were extracted from")
    p.add_argument("--ref-timestep", type=int, default=None,
                   help="timestep of the reference pass (default: the checkpoint's training setting, else 0)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickle weight files (.bin/.ckpt)")
    return p.parse_args(argv)


def prepare_inputs(args: argparse.Namespace) -> tuple[dict, dict]:
    """Reads and validates the reference and the poses; returns `(model inputs, uint8 images for outputs)`."""
    if args.size is not None:
        size = media.parse_size(args.size)
        ref = media.load_image(args.reference, size)
    else:
        ref = media.load_image(args.reference, None)
        size = ref.shape[:2]
        media.check_size(size[0], size[1], f"reference image {args.reference} size")
    kp_size = media.parse_size(args.keypoints_size) if args.keypoints_size else None
    poses, video_fps = load_poses(args.poses, size, max_frames=args.max_frames, keypoints_size=kp_size)
    inputs = {
        "ref_image": media.to_model_image(ref)[None],
        "poses": media.to_pose_image(poses)[None],
    }
    if args.ref_pose:
        ref_pose, _ = load_poses(args.ref_pose, size, max_frames=1, keypoints_size=kp_size)
        inputs["ref_pose"] = media.to_pose_image(ref_pose[:1])
    fps = args.fps or video_fps or 8.0
    return inputs, {"reference": ref, "poses": poses, "fps": fps}


def write_outputs(out: str, frames: np.ndarray, images: dict, metadata: dict) -> dict:
    """Writes result.mp4, result.gif, frames/, grid.mp4, metadata.json; returns their paths."""
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
    media.write_mp4(paths["grid"], media.grid(images["reference"], images["poses"], frames), fps)
    with open(paths["metadata"], "w", encoding="utf-8") as f:
        json.dump({**metadata, "outputs": paths}, f, indent=2)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring); returns 0, or exits 2 on bad input (`humandiff.cli`)."""
    args = parse_args(argv)
    with cli.errors(args.debug):
        return _run(args)


def load(checkpoint: str, *, pose_encoder: str | None = None, allow_pickle: bool = False):
    """The model to animate with (`checkpoints.loading.load_trained`): a training workdir or an export folder."""
    from humandiff.checkpoints import loading  # noqa: PLC0415  (jax: after argument parsing, --help stays fast)

    return loading.load_trained(checkpoint, pose_encoder=pose_encoder, allow_pickle=allow_pickle)


def animate(loaded, inputs: dict, reference: np.ndarray, *, steps: int, guidance: float, sampler: str,
            seed: int = 0, eta: float = 0.0, window: int = 16, overlap: int = 4, ref_timestep: int | None = None,
            on_step=None) -> tuple[np.ndarray, dict]:
    """Samples one video: what the CLI, the notebook and the web demo call.

    Args:
      loaded: `load(...)`.
      inputs: `prepare_inputs`' model inputs (`ref_image`, `poses`, optional `ref_pose`), batch 1.
      reference: the reference as uint8 `[H, W, 3]` (the image encoder's input, when the model has one).
      steps, guidance, sampler, seed, eta: the sampler's settings.
      window, overlap: frames per model call and frames shared by consecutive calls.
      ref_timestep: timestep of the reference pass (None: the model's training setting, else 0).
      on_step: called with the step index after every denoising step (a progress bar).

    Returns:
      `(frames uint8 [F, H, W, 3], metadata)`: the settings used and the seconds spent.
    """
    import jax  # noqa: PLC0415

    from humandiff.diffusion import pipeline, samplers  # noqa: PLC0415

    inputs = dict(inputs)
    enc = loaded.models.image_encoder
    if enc is not None:
        from humandiff.models.clip_preprocess import preprocess  # noqa: PLC0415

        inputs["clip_image"] = preprocess(reference[None], size=enc.config.image_size)
    trained = loaded.settings  # the SCD settings the model was trained with ({} for plain diffusers folders)
    ref_timestep = trained.get("ref_timestep", 0) if ref_timestep is None else ref_timestep
    cfg = pipeline.SamplingConfig(
        ref_timestep=ref_timestep, window=window, overlap=min(overlap, window - 1),
        use_ref_pose="ref_pose" in inputs and trained.get("use_ref_pose", True),
        # full interaction: the reference sees the target, so its K/V cannot be cached; recompute every step
        mode="joint" if trained.get("interaction", "causal") == "full" else "cached")
    schedule = samplers.make_sampler(loaded.schedule, sampler, steps, spacing=loaded.spacing,
                                     steps_offset=loaded.steps_offset, eta=eta)
    generate = pipeline.make_generator(loaded.models, cfg, on_step=on_step)
    t0 = time.perf_counter()
    out = generate(loaded.params, schedule, inputs, jax.random.key(seed), guidance)
    frames = media.to_uint8(np.asarray(jax.block_until_ready(out))[0])
    metadata = {
        "sources": loaded.sources, "num_frames": int(frames.shape[0]), "size": list(frames.shape[1:3]),
        "seed": seed, "steps": steps, "guidance": guidance, "sampler": schedule.kind, "eta": eta,
        "spacing": loaded.spacing, "schedule": dataclasses.asdict(loaded.schedule),
        "sampling": {k: getattr(cfg, k) for k in ("mode", "ref_timestep", "window", "overlap", "fusion",
                                                    "use_ref_pose", "uncond_drop_ref", "uncond_drop_embed",
                                                    "uncond_drop_pose")},
        "seconds": {"compile_and_sample": round(time.perf_counter() - t0, 3)},
        "device": str(jax.devices()[0]),
    }
    return frames, metadata


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415

    if not os.path.exists(args.poses):
        raise FileNotFoundError(f"poses not found: {args.poses}")
    cli.refuse_existing([os.path.join(args.out, name) for name in OUTPUTS], args.overwrite)
    t0 = time.perf_counter()
    inputs, images = prepare_inputs(args)  # validate the cheap inputs before loading weights
    loaded = load(args.checkpoint, pose_encoder=args.pose_encoder, allow_pickle=args.allow_pickle)
    t_load = time.perf_counter() - t0
    n = inputs["poses"].shape[1]
    bar = tqdm(total=args.steps, desc=f"sampling {n} frame(s)", unit="step", file=sys.stderr)
    try:
        frames, metadata = animate(loaded, inputs, images["reference"], steps=args.steps, guidance=args.guidance,
                                   sampler=args.sampler, seed=args.seed, eta=args.eta, window=args.window,
                                   overlap=args.overlap, ref_timestep=args.ref_timestep,
                                   on_step=lambda i: bar.update(1))
    finally:
        bar.close()
    metadata = {"checkpoint": args.checkpoint, "reference": args.reference, "poses": args.poses,
                "fps": images["fps"], **metadata}
    metadata["seconds"] = {"load": round(t_load, 3), **metadata["seconds"]}
    paths = write_outputs(args.out, frames, images, metadata)
    print(f"{n} frame(s) -> {paths['mp4']} ({metadata['seconds']['compile_and_sample']:.1f} s incl. compile)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
