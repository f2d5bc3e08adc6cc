"""Temporal consistency of a static and a moving pose sequence: independent per-frame sampling vs motion modules.

    PYTHONPATH=. python benchmarks/temporal_consistency.py --workdir runs/demo_video      # a configs/demo_video.py run

Held-out synthetic identities (the `test` split, never trained on), frame 0 as the reference, two sequences:

- `static` (default): the reference's own pose, repeated F times, drives every target frame, so the truth is the
  reference repeated and a perfect video has no frame-to-frame change;
- `moving` (`--sequence moving`): the identity's own next F frames and poses (the trainer's held-out frames), so
  the truth moves and a good video changes from frame to frame as much as the truth does (`truth_frame_diff`).

Each frame starts from its own noise (the same noise, sampler and CFG for every model):

- `per_frame`: the stage-1 image model (the stage-2 run's frozen parameters, motion modules off): frames sampled
  independently;
- `motion_step0`: the motion-module UNet with every motion `proj_out` zeroed, i.e. the zero-initialised state the
  video stage starts from (must equal `per_frame`);
- `motion_trained`: the trained motion modules (EMA parameters of the latest checkpoint).

Metrics (frames clipped to [-1, 1], then scaled to [0, 255], not quantised): `frame_diff` = mean over videos of
`mean |x[f+1] - x[f]|` (humandiff.metrics.image.frame_difference), and `psnr` (dB) against the truth, both per video
and averaged. Writes benchmarks/results/temporal_consistency_<backend>.json and optionally a PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import results_io  # benchmarks/results_io.py: a script's own folder is on sys.path

from humandiff import media
from humandiff.metrics.image import frame_difference
from humandiff.training import evals
from humandiff.checkpoints import export
from humandiff.weights import io


def static_inputs(config, num_videos: int, num_frames: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sampler inputs whose target poses are the reference's own pose F times; truth = the reference F times."""
    held, _ = evals.held_out(config, "test", num_videos, 1)
    inputs = {"ref_image": held["ref_image"], "ref_pose": held["ref_pose"],
              "poses": np.repeat(held["ref_pose"][:, None], num_frames, axis=1)}
    return inputs, np.repeat(held["ref_image"][:, None], num_frames, axis=1)


def moving_inputs(config, num_videos: int, num_frames: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sampler inputs and truth of the trainer's held-out evaluation: each identity's next frames and poses."""
    return evals.held_out(config, "test", num_videos, num_frames)


def zero_motion_output(params: dict) -> dict:
    """`params` with every motion module's `proj_out` zeroed: the output of a freshly initialised video stage."""
    flat = io.flatten(params)
    hit = [k for k in flat if "/motion_modules_" in k and "/proj_out/" in k]
    if not hit:
        raise ValueError("no motion-module proj_out parameters found: not a video-stage (motion modules) checkpoint")
    return io.unflatten({k: np.zeros_like(v) if k in hit else v for k, v in flat.items()})


def without_motion(models, params: dict):
    """The image model: the same UNet with motion modules off, and its parameters without them."""
    flat = {k: v for k, v in io.flatten(params).items() if "/motion_modules_" not in k}
    return dataclasses.replace(models, unet=models.unet.clone(motion_modules=False)), io.unflatten(flat)


def video_metrics(frames: np.ndarray, truth: np.ndarray) -> dict:
    """frame_diff ([0, 255] units) and PSNR (dB, [-1, 1] images) per video and their means."""
    x = np.clip(np.asarray(frames, np.float64), -1.0, 1.0)
    diff = frame_difference(x * 127.5)  # [B]: a [-1, 1] step of 2 is 255
    per_psnr = [evals.psnr(x[i], truth[i]) for i in range(x.shape[0])]
    return {"frame_diff": float(np.mean(diff)), "psnr": float(np.mean(per_psnr)),
            "frame_diff_per_video": [round(float(d), 4) for d in diff],
            "psnr_per_video": [round(float(p), 3) for p in per_psnr]}


def _sample(models, config, params, inputs, seed: int, num_frames: int) -> tuple[np.ndarray, float]:
    sample_fn = evals.make_sampler_fn(models, config, num_frames)  # one temporal window covers the whole video
    t0 = time.perf_counter()
    frames = np.asarray(sample_fn(params, inputs, jax.random.key(seed), config.sample.guidance_scale))
    return frames, time.perf_counter() - t0


def run(args) -> tuple[dict, dict]:
    trained = export.read_checkpoint(args.workdir, ema=not args.raw)
    config, models = trained.config, trained.models
    if not getattr(models.unet, "motion_modules", False):
        raise ValueError(f"{args.workdir}/config.json: model.unet_extra.motion_modules is off; pass a video-stage "
                         "(configs/demo_video.py) workdir")
    config.unlock()
    if args.steps:
        config.sample.num_steps = args.steps
    if args.guidance is not None:
        config.sample.guidance_scale = args.guidance
    inputs, truth = (moving_inputs if args.sequence == "moving" else static_inputs)(config, args.videos, args.frames)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), trained.params)
    image_models, image_params = without_motion(models, params)
    variants = {"per_frame": (image_models, image_params), "motion_step0": (models, zero_motion_output(params)),
                "motion_trained": (models, params)}
    rows, frames = {}, {}
    for name, (m, p) in variants.items():
        frames[name], seconds = _sample(m, config, p, inputs, args.seed, args.frames)
        rows[name] = dict(video_metrics(frames[name], truth), seconds_incl_compile=round(seconds, 2))
    result = {
        "workdir": os.path.abspath(args.workdir), "step": trained.step, "ema": trained.ema,
        "sequence": args.sequence, "videos": args.videos, "frames": args.frames, "seed": args.seed,
        "sampler": config.sample.sampler,
        "sample_steps": config.sample.num_steps, "guidance": config.sample.guidance_scale,
        "train_frames": config.data.num_frames, "train_stride": config.data.stride,
        "units": "frame_diff: mean |x[f+1]-x[f]| in [0, 255] (float, unquantised); psnr: dB vs the true frames "
                 "([-1, 1] images, peak-to-peak 2)",
        **rows, "truth_frame_diff": video_metrics(truth, truth)["frame_diff"],
        "step0_equals_per_frame_max_abs": float(np.max(np.abs(frames["motion_step0"] - frames["per_frame"]))),
        "frame_diff_ratio_trained_over_per_frame": (rows["motion_trained"]["frame_diff"]
                                                    / rows["per_frame"]["frame_diff"]),
    }
    return result, dict(frames, truth=truth, ref=inputs["ref_image"])


def write_png(path: str, arrays: dict) -> None:
    """Rows per video: per-frame sampling, then trained motion modules; F frames left to right (reference first)."""
    rows = []
    for i in range(arrays["ref"].shape[0]):
        for name in ("per_frame", "motion_trained"):
            rows.append(np.concatenate([media.to_uint8(arrays["ref"][i])] + list(media.to_uint8(arrays[name][i])),
                                       axis=1))
    media.write_image(path, np.concatenate(rows, axis=0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="video-stage workdir (configs/demo_video.py run)")
    p.add_argument("--videos", type=int, default=8, help="held-out identities")
    p.add_argument("--frames", type=int, default=8, help="frames per video")
    p.add_argument("--sequence", choices=("static", "moving"), default="static",
                   help="static: the reference pose repeated; moving: the identity's own next frames")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same for every model)")
    p.add_argument("--steps", type=int, default=0, help="denoising steps (0: the run's sample.num_steps)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the run's)")
    p.add_argument("--raw", action="store_true", help="raw parameters instead of the EMA")
    p.add_argument("--png", default="", help="optional side-by-side PNG path")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/temporal_consistency_<backend>"
                                                ".json; results are keyed by step and frames)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result, arrays = run(args)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    backend = jax.default_backend()
    result["machine"] = results_io.machine()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"temporal_consistency_{backend}.json")
    key = f"step_{result['step']}_frames_{args.frames}" + ("_moving" if args.sequence == "moving" else "")
    results_io.merge_into(out, key, result)
    if args.png:
        write_png(args.png, arrays)
    pf, mt, s0 = result["per_frame"], result["motion_trained"], result["motion_step0"]
    print(f"step {result['step']}, {args.videos} videos x {args.frames} {args.sequence} frames: frame_diff [0,255] "
          f"truth {result['truth_frame_diff']:.3f} | per-frame "
          f"{pf['frame_diff']:.3f} | motion step0 {s0['frame_diff']:.3f} | motion trained {mt['frame_diff']:.3f} "
          f"(ratio {result['frame_diff_ratio_trained_over_per_frame']:.3f}); PSNR {pf['psnr']:.2f} | "
          f"{s0['psnr']:.2f} | {mt['psnr']:.2f} dB -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
