"""Periodic samples and the held-out reconstruction check, through the jitted SCD sampler.

Held-out inputs come from the synthetic source's `test` split (identities never trained on): frame 0 of each video
is the reference, the next `sample.num_frames` frames (every `data.stride`-th) are the targets, their rendered
poses drive the model. Three PSNRs against the true target frames (all in dB, [-1, 1] images):

- `psnr_scd`: the model sampled with the reference (CFG at `sample.guidance_scale`);
- `psnr_no_ref`: the same model and noise without the reference (guidance 0 = the unconditional branch: no
  reference K/V, zero image embedding);
- `psnr_copy_ref`: the reference frame copied to every target.

SCD helps when `psnr_scd` beats both baselines. With two or more identities, `se_vs_copy_ref` and `se_vs_no_ref`
give the standard error (over identities) of the per-identity PSNR gain over each baseline: identities differ a
lot (how far the figure moves from its reference pose decides how good a copy is), so a gain should be read
against it. Inside a training run the identities are split over the mesh's `data` axis when they divide evenly.
Samples go to `<workdir>/samples/step_<n>.{mp4,png}` (reference | pose | sample | truth per frame) and to
TensorBoard.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from humandiff import cli, media
from humandiff.metrics import image
from humandiff.models.scd import Models
from humandiff.training import optim, runtime


def held_out_inputs(config, num_videos: int, num_frames: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`(inputs, truth)`: sampler inputs and true target frames `[B, F, H, W, 3]` in [-1, 1]."""
    from humandiff.data import pose_render, synthetic

    h, w = (int(x) for x in config.data.resolution)
    # Targets spread over a training-length video, so the reference is rarely a good copy of them.
    stride = max(1, (int(config.data.synthetic.num_frames) - 1) // num_frames)
    source = synthetic.SyntheticSource(num_videos, 1 + num_frames * stride, h, w, seed=config.data.synthetic.seed,
                                       split="test", travel=config.data.synthetic.travel)
    refs, ref_poses, poses, truth = [], [], [], []
    for i in range(num_videos):
        video = source[i]
        idx = 1 + stride * np.arange(num_frames)
        refs.append(video["frames"][0])
        ref_poses.append(pose_render.render_pose(video["keypoints"][0], h, w))
        poses.append(np.stack([pose_render.render_pose(video["keypoints"][t], h, w) for t in idx]))
        truth.append(video["frames"][idx])
    to_signed = lambda x: np.asarray(x, np.float32) / 127.5 - 1.0  # noqa: E731
    inputs = {"ref_image": to_signed(np.stack(refs)), "ref_pose": np.stack(ref_poses).astype(np.float32) / 255.0,
              "poses": np.stack(poses).astype(np.float32) / 255.0}
    return inputs, to_signed(np.stack(truth))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR (dB) over frames of images in [-1, 1] (peak-to-peak 2); the samples `a` are clipped to [-1, 1]."""
    a = np.clip(np.asarray(a, np.float64), -1.0, 1.0)
    return float(np.mean(image.psnr(a, np.asarray(b, np.float64), max_val=2.0, mse_floor=1e-12)))


def sampling_mesh(mesh: jax.sharding.Mesh | None, num_videos: int) -> jax.sharding.Mesh | None:
    """`mesh` when its `data` axis (> 1) divides `num_videos`, so each device samples its own identities; else
    None (one program over the parameters' devices, as XLA places it: the same numbers, only slower)."""
    if mesh is None or mesh.shape.get("data", 1) <= 1 or num_videos % mesh.shape["data"]:
        return None
    return mesh


def make_sampler_fn(models: Models, config, mesh: jax.sharding.Mesh | None = None):
    """`(params, inputs, rng, guidance) -> frames [B, F, H, W, 3]`, jitted once (guidance is traced).

    With `mesh`, the batch is split over its `data` axis (see `sampling_mesh`) and the parameters replicated."""
    from humandiff.diffusion import pipeline, samplers
    from humandiff.training.step import make_schedule

    cfg = pipeline.SamplingConfig(ref_timestep=config.diffusion.ref_timestep, use_ref_pose=config.model.use_ref_pose,
                                  window=max(int(config.sample.num_frames), 1), overlap=0,
                                  mode="joint" if config.model.interaction == "full" else "cached")
    sampler = samplers.make_sampler(make_schedule(config).config, config.sample.sampler, config.sample.num_steps,
                                    spacing=config.sample.timestep_spacing)
    generate = pipeline.make_generator(models, cfg, mesh=mesh)
    return lambda params, inputs, rng, guidance: generate(params, sampler, inputs, rng, guidance)


def _clip_inputs(models: Models, inputs: dict) -> dict:
    if models.image_encoder is None:
        return inputs
    from humandiff.models.clip_preprocess import preprocess
    size = models.image_encoder.config.image_size
    return dict(inputs, clip_image=np.asarray(preprocess(inputs["ref_image"], size=size), np.float32))


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # noqa: PLC0415  (batch split over several processes)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate(models: Models, config, params: Any, *, num_videos: int, num_frames: int, seed: int = 0,
             sample_fn=None, mesh: jax.sharding.Mesh | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Held-out PSNRs (see the module docstring) and the arrays behind them, sampled with `params` in float32.
    `mesh`: a device mesh, used as `sampling_mesh` says (ignored when `sample_fn` is given)."""
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    inputs, truth = held_out_inputs(config, num_videos, num_frames)
    inputs = _clip_inputs(models, inputs)
    sample_fn = sample_fn or make_sampler_fn(models, config, sampling_mesh(mesh, num_videos))
    rng = jax.random.key(seed)
    with_ref = _to_host(sample_fn(params, inputs, rng, config.sample.guidance_scale))
    no_ref = _to_host(sample_fn(params, inputs, rng, 0.0))
    copy = np.broadcast_to(inputs["ref_image"][:, None], truth.shape)
    metrics = {"psnr_scd": psnr(with_ref, truth), "psnr_no_ref": psnr(no_ref, truth),
               "psnr_copy_ref": psnr(copy, truth)}
    if num_videos > 1:
        per_identity = lambda x: np.array([psnr(x[i], truth[i]) for i in range(num_videos)])  # noqa: E731
        scd = per_identity(with_ref)
        for name, baseline in (("copy_ref", copy), ("no_ref", no_ref)):
            gain = scd - per_identity(baseline)
            metrics[f"se_vs_{name}"] = float(np.std(gain, ddof=1) / np.sqrt(num_videos))
    return metrics, {"inputs": inputs, "sample": with_ref, "no_ref": no_ref, "truth": truth}


def write_samples(models: Models, config, state: dict, frozen: Any, step: int, workdir: str, writer, *,
                  sample_fn=None) -> dict:
    """Samples held-out identities with the EMA (or current) parameters; writes mp4/png/json and TensorBoard.
    `sample_fn`: a `make_sampler_fn` result kept across calls (the trainer's, over its mesh), so periodic samples
    are traced and compiled once; without it each call builds and compiles a new one."""
    trained = state["ema"] if state.get("ema") else state["params"]
    metrics, arrays = evaluate(models, config, optim.merge(trained, frozen), num_videos=config.sample.num_videos,
                               num_frames=config.sample.num_frames, seed=step, sample_fn=sample_fn)
    if jax.process_index() != 0:
        return metrics
    inputs = arrays["inputs"]
    b, f = arrays["truth"].shape[:2]
    ref = np.broadcast_to(media.to_uint8(inputs["ref_image"])[:, None], arrays["truth"].shape)
    pose = (np.asarray(inputs["poses"]) * 255).astype(np.uint8)
    rows = np.concatenate([ref, pose, media.to_uint8(arrays["sample"]), media.to_uint8(arrays["truth"])], axis=3)
    frames = np.concatenate(list(rows), axis=1)  # videos stacked vertically: [F, B*H, 4*W, 3]
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    media.write_image(os.path.join(out_dir, f"step_{step:07d}.png"), np.concatenate(list(frames), axis=1))
    _, h, w, _ = frames.shape  # H.264 needs even sides
    media.write_mp4(os.path.join(out_dir, f"step_{step:07d}.mp4"),
                    np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))), fps=8.0)
    with open(os.path.join(out_dir, f"step_{step:07d}.json"), "w") as fh:
        json.dump(dict(metrics, step=step, num_videos=b, num_frames=f), fh, indent=1)
    writer.image(step, "samples/ref_pose_sample_truth", frames[0])
    writer.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """`python -m humandiff.training.evals WORKDIR [--num_videos 32]`: the held-out check of a training run's
    checkpoint on more identities than the trainer samples. Prints the PSNRs and writes them to
    `<workdir>/samples/heldout_step_<n>_<videos>x<frames>.json`. Bad input exits 2 (`humandiff.cli`)."""
    from humandiff import config_lib  # noqa: PLC0415
    from humandiff.checkpoints import export, loading  # noqa: PLC0415

    p = cli.ArgumentParser(prog="python -m humandiff.training.evals", description=main.__doc__.splitlines()[0])
    p.add_argument("workdir", help="training workdir (its config.json and checkpoints/)")
    p.add_argument("--num_videos", type=int, default=32, help="held-out identities")
    p.add_argument("--num_frames", type=int, default=8, help="target frames per identity")
    p.add_argument("--seed", type=int, default=0, help="sampling noise seed")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--raw", action="store_true", help="the raw parameters instead of the EMA")
    args = p.parse_args(argv)
    with cli.errors(args.debug):
        config = export.load_config(export.resolve_checkpoint(args.workdir, args.step)[0])
        # The run's CPU split (mesh.cpu_devices): the identities are then spread over the devices. Only before JAX
        # starts; called from a process that has already run JAX (a notebook), its devices stay as they are.
        try:
            runtime.use_cpu_devices(config_lib.cpu_devices(config))
        except RuntimeError:  # "should be updated before backends are initialized"
            pass
        if config.data.source != "synthetic":
            raise ValueError(f"data.source={config.data.source!r} in {args.workdir}: the held-out check samples "
                             "synthetic identities; use humandiff.evaluate for datasets")
        trained = loading.load_trained(args.workdir, config=config, ema=not args.raw, step=args.step)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    metrics, _ = evaluate(trained.models, config, trained.params, num_videos=args.num_videos,
                          num_frames=args.num_frames, seed=args.seed, mesh=mesh)
    step, workdir = trained.sources["step"], trained.sources["workdir"]
    result = dict(metrics, step=step, ema=trained.sources["ema"], num_videos=args.num_videos,
                  num_frames=args.num_frames, seed=args.seed)
    out = os.path.join(workdir, "samples", f"heldout_step_{step:07d}_{args.num_videos}x{args.num_frames}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
