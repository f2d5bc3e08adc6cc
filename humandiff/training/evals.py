"""The trainer's evaluations: a small registry of evaluators named in `config.evals` (big_vision's pattern).

    c.evals.heldout = dict(type="heldout", every=0, split="test", num_videos=4, num_frames=8, seed=0)
    c.evals.val_loss = dict(type="loss", every=500, split="test", num_batches=4, seed=0)

Each entry's `type` picks a class in `EVALUATORS`, `every` is the steps between runs (0: only at the end of
training), the other fields are the evaluator's own (`config_lib.EVAL_FIELDS` lists and checks them). Both read
the run's own data (`data.source`, `data.name`, `task`) from the split they name: the synthetic source's test
identities (never trained on), a built dataset's test split, VITON-HD's `test_paired` pairs. The trainer and
`python -m humandiff.training.evals WORKDIR` build them with `build` and call the same code, so they agree.

- `heldout`: held-out examples (`held_out`) sampled with the run's sampler settings (`config.sample`); PSNRs
  against the true frames, in dB on [-1, 1] images:
  `psnr_scd` (the model with the reference, CFG at `sample.guidance_scale`), `psnr_no_ref` (same model and noise
  without the reference: guidance 0 is the unconditional branch), `psnr_copy_ref` (the reference frame copied to
  every target; not for try-on, where the reference is the garment). Try-on PSNRs count only the pixels inside
  the try-on mask (outside it the person is kept). With two or more examples, `se_vs_*` is the standard error
  (over examples) of the per-example PSNR gain over each baseline: examples differ a lot, so a gain should be
  read against it. `ssim_scd` (scikit-image SSIM of the uint8 frames) and `l1_scd` (mean |sample - truth| on
  [0, 1]) score the same samples (not for try-on); the JSON also lists each example's values (`per_video`).
  Writes `<workdir>/evals/<name>/step_<n>.{png,mp4,json}` (reference | pose | sample | truth).
- `loss`: the training loss (`step.compute_loss`) on `num_batches` held-out batches of `batch_size` examples (a
  split smaller than that is repeated, with other frames), with fixed draws (timesteps, noise) from `seed`, no
  condition dropout and no flips; writes `step_<n>.json`.

Metrics also go to TensorBoard as `<name>/<metric>`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from humandiff import cli, media
from humandiff.metrics import image
from humandiff.models.scd import Models
from humandiff.training import input as train_input, optim, runtime, sharding


def held_out(config, split: str, num_videos: int, num_frames: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`(inputs, truth)`: sampler inputs for the first `num_videos` examples of `split` of the run's data, and their
    true target frames `[B, F, H, W, 3]` in [-1, 1].

    Video records (`examples.held_out_video`): frame 0 is the reference, `num_frames` targets spread over the rest.
    Synthetic runs draw videos just long enough for them, spread as over a training-length video. Try-on records
    (`num_frames` 1): garment as reference, the person as truth and as `tryon_person`, with its `tryon_mask`. A
    mixture takes its datasets in turn.
    """
    from humandiff.data import examples, loader, sources

    dc = train_input.data_config(config)
    dc.split = split
    options = dataclasses.replace(loader.example_options(dc), flip_prob=0.0, crop_scale=(1.0, 1.0), drop_prob=0.0)
    if config.data.source == "synthetic":
        syn = config.data.synthetic
        stride = max(1, (int(syn.num_frames) - 1) // num_frames)
        parts = [sources.SyntheticVideos(num_videos, 1 + num_frames * stride, syn.height, syn.width, syn.seed,
                                         split=split, travel=syn.travel)]
    else:
        source = loader.open_source(dc)
        parts = list(source.sources) if isinstance(source, loader.Mixture) else [source]
    available = sum(len(p) for p in parts)
    if available < num_videos:
        raise ValueError(f"split {split!r} of the run's data has {available} examples, fewer than the "
                         f"{num_videos} an evaluation asks for (lower its num_videos)")
    records = [parts[i % len(parts)][i // len(parts)] for i in range(num_videos)]
    if config.task == "tryon":
        op = examples.TryOnExampleOp(options)
        ex = [op(r, np.random.default_rng(i)) for i, r in enumerate(records)]
        person = np.stack([e["tgt_image"] for e in ex])
        inputs = {"ref_image": np.stack([e["ref_image"] for e in ex]),
                  "ref_pose": np.stack([e["ref_pose"] for e in ex]),
                  "poses": np.stack([e["tgt_pose"] for e in ex])[:, None],
                  "tryon_person": person, "tryon_mask": np.stack([e["tryon_mask"] for e in ex])}
        return inputs, person[:, None]
    ex = [examples.held_out_video(r, options, num_frames) for r in records]
    inputs = {"ref_image": np.stack([e["ref_image"] for e in ex]), "ref_pose": np.stack([e["ref_pose"] for e in ex]),
              "poses": np.stack([e["tgt_pose"] for e in ex])}
    return inputs, np.stack([e["tgt_image"] for e in ex])


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean PSNR (dB) over frames of images in [-1, 1] (peak-to-peak 2); the samples `a` are clipped to [-1, 1].
    `mask` (`[..., H, W, 1]`): only the pixels where it is 1 count."""
    a = np.clip(np.asarray(a, np.float64), -1.0, 1.0)
    return float(np.mean(image.psnr(a, np.asarray(b, np.float64), max_val=2.0, mse_floor=1e-12, mask=mask)))


def sampling_mesh(mesh: jax.sharding.Mesh | None, num_videos: int) -> jax.sharding.Mesh | None:
    """`mesh` when its `data` axis (> 1) divides `num_videos`, so each device samples its own identities; else
    None (one program over the parameters' devices, as XLA places it: the same numbers, only slower)."""
    if mesh is None or mesh.shape.get("data", 1) <= 1 or num_videos % mesh.shape["data"]:
        return None
    return mesh


def make_sampler_fn(models: Models, config, num_frames: int, mesh: jax.sharding.Mesh | None = None):
    """`(params, inputs, rng, guidance) -> frames [B, F, H, W, 3]` with the run's sampler settings
    (`config.sample`), one temporal window of `num_frames`; jitted once (guidance is traced).

    With `mesh`, the batch is split over its `data` axis (see `sampling_mesh`) and the parameters replicated."""
    from humandiff.diffusion import pipeline, samplers
    from humandiff.training.step import make_schedule

    cfg = pipeline.SamplingConfig(ref_timestep=config.diffusion.ref_timestep, use_ref_pose=config.model.use_ref_pose,
                                  window=max(int(num_frames), 1), overlap=0,
                                  mode="joint" if config.model.interaction == "full" else "cached")
    sampler = samplers.make_sampler(make_schedule(config).config, config.sample.sampler, config.sample.num_steps,
                                    spacing=config.sample.timestep_spacing)
    generate = pipeline.make_generator(models, cfg, mesh=mesh)
    return lambda params, inputs, rng, guidance: generate(params, sampler, inputs, rng, guidance)


def _clip_inputs(models: Models, inputs: dict) -> dict:
    """With an image encoder, `inputs` plus its `clip_image`, prepared from the uint8 reference as sampling does
    (`Models.clip_input`), so the trainer's numbers are the sample CLI's."""
    if models.image_encoder is None:
        return inputs
    return dict(inputs, clip_image=np.asarray(models.clip_input(media.to_uint8(inputs["ref_image"])), np.float32))


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils  # noqa: PLC0415  (batch split over several processes)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _write_json(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(record, fh, indent=1)


class HeldOut:
    """`type="heldout"`: samples held-out examples and scores them (see the module docstring)."""

    def __init__(self, name: str, models: Models, config, mesh: jax.sharding.Mesh | None = None):
        self.name, self.fields = name, config.evals[name]
        self.models, self.config = models, config
        f = self.fields
        inputs, self.truth = held_out(config, f.split, f.num_videos, f.num_frames)
        self.inputs = _clip_inputs(models, inputs)
        self.sample_fn = make_sampler_fn(models, config, f.num_frames, sampling_mesh(mesh, f.num_videos))

    def evaluate(self, params: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Metrics and the arrays behind them (`inputs`, `sample`, `no_ref`, `truth`) for full float32 `params`."""
        inputs, truth = self.inputs, self.truth
        rng = jax.random.key(self.fields.seed)
        with_ref = _to_host(self.sample_fn(params, inputs, rng, self.config.sample.guidance_scale))
        no_ref = _to_host(self.sample_fn(params, inputs, rng, 0.0))
        mask = inputs["tryon_mask"][:, None] if "tryon_mask" in inputs else None
        per_example = lambda x: np.array([psnr(x[i], truth[i], None if mask is None else mask[i])  # noqa: E731
                                          for i in range(len(truth))])
        scores = {"scd": per_example(with_ref), "no_ref": per_example(no_ref)}
        if mask is None:  # a try-on reference is the garment: copying it is no baseline
            scores["copy_ref"] = per_example(np.broadcast_to(inputs["ref_image"][:, None], truth.shape))
        metrics = {f"psnr_{k}": float(np.mean(v)) for k, v in scores.items()}
        if len(truth) > 1:
            for k in [k for k in scores if k != "scd"]:
                metrics[f"se_vs_{k}"] = float(np.std(scores["scd"] - scores[k], ddof=1) / np.sqrt(len(truth)))
        per_video = {"psnr_scd": scores["scd"]}
        if mask is None:  # SSIM and L1 over whole frames (a try-on frame is mostly the kept person)
            per_video["ssim_scd"] = np.mean(image.ssim(media.to_uint8(with_ref), media.to_uint8(truth)), axis=1)
            per_video["l1_scd"] = np.mean(np.abs(np.clip(with_ref, -1, 1) - truth), axis=(1, 2, 3, 4)) / 2.0
            metrics.update(ssim_scd=float(np.mean(per_video["ssim_scd"])), l1_scd=float(np.mean(per_video["l1_scd"])))
        return metrics, {"inputs": inputs, "sample": with_ref, "no_ref": no_ref, "truth": truth,
                         "per_video": per_video}

    def write(self, metrics: dict, arrays: dict, step: int, out_dir: str, writer=None) -> None:
        """`step_<n>.{png,mp4,json}` under `out_dir` (reference | pose | sample | truth per frame) and TensorBoard."""
        inputs = arrays["inputs"]
        b, f = arrays["truth"].shape[:2]
        ref = np.broadcast_to(media.to_uint8(inputs["ref_image"])[:, None], arrays["truth"].shape)
        pose = (np.asarray(inputs["poses"]) * 255).astype(np.uint8)
        rows = np.concatenate([ref, pose, media.to_uint8(arrays["sample"]), media.to_uint8(arrays["truth"])], axis=3)
        frames = np.concatenate(list(rows), axis=1)  # examples stacked vertically: [F, B*H, 4*W, 3]
        os.makedirs(out_dir, exist_ok=True)
        media.write_image(os.path.join(out_dir, f"step_{step:07d}.png"), np.concatenate(list(frames), axis=1))
        _, h, w, _ = frames.shape  # H.264 needs even sides
        media.write_mp4(os.path.join(out_dir, f"step_{step:07d}.mp4"),
                        np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))), fps=8.0)
        per_video = {k: [float(x) for x in v] for k, v in arrays["per_video"].items()}
        _write_json(os.path.join(out_dir, f"step_{step:07d}.json"), dict(metrics, step=step, num_videos=b,
                                                                         num_frames=f, per_video=per_video))
        if writer is not None:
            writer.image(step, f"{self.name}/ref_pose_sample_truth", frames[0])


class HeldOutLoss:
    """`type="loss"`: the training loss on held-out batches with fixed draws (see the module docstring)."""

    def __init__(self, name: str, models: Models, config, mesh: jax.sharding.Mesh | None = None):
        from humandiff.data import loader
        from humandiff.training import step as step_lib

        self.name, self.fields = name, config.evals[name]
        f = self.fields
        shards = mesh.shape["data"] * mesh.shape.get("fsdp", 1) if mesh is not None else 1
        # Batches split over the mesh as in training; a batch the mesh does not divide (the CLI on another machine)
        # runs as one program over the parameters' devices instead.
        self.sharding = (sharding.batch_sharding(mesh) if mesh is not None and config.batch_size % shards == 0
                         else None)
        dc = train_input.data_config(config)
        dc.split, dc.shuffle, dc.flip, dc.drop_prob, dc.crop_scale = f.split, False, False, 0.0, (1.0, 1.0)
        # Every process reads the whole global batches, so the numbers do not depend on the process count.
        one = loader.shard_options(0, 1)
        batches = loader.build_dataset(loader.open_source(dc), dc, seed=f.seed, shard=one)  # repeats a small split
        self.batches = list(itertools.islice(iter(batches), f.num_batches))
        schedule = step_lib.make_schedule(config)
        self.loss = jax.jit(lambda params, batch, rng: step_lib.compute_loss(models, config, schedule, params, batch,
                                                                            rng)[0])

    def evaluate(self, params: Any) -> tuple[dict[str, float], dict]:
        """`{"loss": mean over the batches}` for full `params`."""
        key = jax.random.key(self.fields.seed)
        values = []
        for i, whole in enumerate(self.batches):
            batch = whole if self.sharding is None else {
                k: jax.make_array_from_callback(v.shape, self.sharding, lambda index, v=v: v[index])
                for k, v in whole.items()}
            values.append(float(self.loss(params, batch, jax.random.fold_in(key, i))))
        return {"loss": float(np.mean(values))}, {}

    def write(self, metrics: dict, arrays: dict, step: int, out_dir: str, writer=None) -> None:
        """`step_<n>.json` under `out_dir`."""
        del arrays, writer
        _write_json(os.path.join(out_dir, f"step_{step:07d}.json"), dict(metrics, step=step))


EVALUATORS = {"heldout": HeldOut, "loss": HeldOutLoss}  # type -> class; fields: config_lib.EVAL_FIELDS


def build(models: Models, config, mesh: jax.sharding.Mesh | None = None, names: Any = None) -> dict[str, Any]:
    """The evaluators of `config.evals` (or only `names`), by name; reads their data and builds their jitted
    functions once, so periodic runs compile once."""
    out = {}
    for name in list(config.evals) if names is None else names:
        try:
            out[name] = EVALUATORS[config.evals[name].type](name, models, config, mesh)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"config.evals.{name}: {e}") from e
    return out


def run(evaluators: dict, state: dict, frozen: Any, step: int, workdir: str, writer=None) -> dict[str, dict]:
    """Runs each evaluator on the EMA (or current) parameters merged with `frozen`, in float32; writes its files
    under `<workdir>/evals/<name>/` and its metrics to `writer` as `<name>/<metric>`."""
    trained = state["ema"] if state.get("ema") else state["params"]
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), optim.merge(trained, frozen))
    results = {}
    for name, evaluator in evaluators.items():
        metrics, arrays = evaluator.evaluate(params)
        results[name] = metrics
        if jax.process_index() == 0:
            evaluator.write(metrics, arrays, step, os.path.join(workdir, "evals", name), writer)
            if writer is not None:
                writer.scalars(step, {f"{name}/{k}": v for k, v in metrics.items()})
    return results


def due(config, name: str, step: int) -> bool:
    """Whether evaluator `name` runs after `step` inside training (the trainer runs every one at the end)."""
    every = config.evals[name].every
    return bool(every) and step % every == 0 and step < config.total_steps


def main(argv: list[str] | None = None) -> dict:
    """`python -m humandiff.training.evals WORKDIR [--eval NAME] [--num_videos 32]`: a training run's evaluations
    on one of its checkpoints, as the trainer runs them (same data, settings and seed unless overridden). Prints the
    metrics and writes `<workdir>/evals/<name>/cli/step_<n>[_<overrides>].json`. Bad input exits 2 (`humandiff.cli`)."""
    from humandiff import config_lib  # noqa: PLC0415
    from humandiff.checkpoints import export, loading  # noqa: PLC0415

    p = cli.ArgumentParser(prog="python -m humandiff.training.evals", description=main.__doc__.splitlines()[0])
    p.add_argument("workdir", help="training workdir (its config.json and checkpoints/)")
    p.add_argument("--eval", action="append", default=None, help="evaluator name in config.evals (default: all)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--raw", action="store_true", help="the raw parameters instead of the EMA")
    p.add_argument("--split", default=None, help="override each evaluator's data split")
    for field in ("num_videos", "num_frames", "num_batches", "seed"):
        p.add_argument(f"--{field}", type=int, default=None, help=f"override {field} (evaluators that have it)")
    args = p.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("split", "num_videos", "num_frames", "num_batches", "seed")
                 if getattr(args, k) is not None}
    with cli.errors(args.debug):
        config = export.load_config(export.resolve_checkpoint(args.workdir, args.step)[0])
        # The run's CPU split (mesh.cpu_devices): held-out examples are then spread over the devices. Only before
        # JAX starts; called from a process that has already run JAX (a notebook), its devices stay as they are.
        try:
            runtime.use_cpu_devices(config_lib.cpu_devices(config))
        except RuntimeError:  # "should be updated before backends are initialized"
            pass
        if "evals" not in config:
            raise ValueError(f"config.json in {args.workdir} has no 'evals' section (a run from before the evaluator "
                             "registry); add one as configs/common.py does")
        names = args.eval or list(config.evals)
        unknown = [n for n in names if n not in config.evals]
        if unknown:
            raise ValueError(f"--eval {unknown[0]} is not in {args.workdir}'s config.evals "
                             f"({', '.join(config.evals) or 'none'})")
        with config.unlocked():
            for name in names:
                for key, value in overrides.items():
                    if key in config.evals[name]:
                        config.evals[name][key] = value
        config_lib.validate_evals(config)
        trained = loading.load_trained(args.workdir, config=config, ema=not args.raw, step=args.step)
        mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(-1, 1, 1), ("data", "fsdp", "tensor"))
        evaluators = build(trained.models, config, mesh, names)  # reads the held-out data: a missing split is named
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), trained.params)
    step, workdir = trained.sources["step"], trained.sources["workdir"]
    tag = "".join(f"_{k}={v}" for k, v in sorted(overrides.items())) + ("_raw" if args.raw else "")
    results = {}
    for name, evaluator in evaluators.items():
        metrics, _ = evaluator.evaluate(params)
        results[name] = dict(metrics, step=step, ema=trained.sources["ema"], **config.evals[name].to_dict())
        _write_json(os.path.join(workdir, "evals", name, "cli", f"step_{step:07d}{tag}.json"), results[name])
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
