"""Sampler throughput: seconds per frame, and the cached two-stage vs recompute-every-step speed ratio.

    PYTHONPATH=. python benchmarks/sampler.py                  # tiny UNet, 20 steps (about a minute on a CPU)
    PYTHONPATH=. python benchmarks/sampler.py --sd15 --steps 1 # SD-1.5 UNet shapes (random weights)
    PYTHONPATH=. python benchmarks/sampler.py --unet bench --latent 32 --frames 2 --steps 4 --iters 3
                                                               # the UNet of benchmarks/vs_referencenet.py

Both modes run the full jitted pipeline (`humandiff.diffusion.pipeline.generate`) with CFG (2 branches) on one
reference and F target frames, no VAE (latent-space timing):
- cached: reference pass once (K/V cache), then per step one UNet call on the 2F target entries;
- joint: per step one joint UNet call on 2F reference copies + 2F target entries (the recompute oracle).
Counted FLOPs (XLA `cost_analysis` of the preparation and of one step) give the FLOP ratio; times are medians of
alternated A/B runs after one compile + warm-up each. Writes benchmarks/results/sampler_<backend>.json.

`--profile N` instead traces N guided denoising steps per mode (the cached reference pass left out: it runs once
per sample) and splits each step's time by UNet part and op category with `benchmarks/profile_step.py`'s parser
of the XLA:CPU trace, to show where the cached/joint ratio goes, e.g. what share the self-attention takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import resource
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import results_io  # benchmarks/results_io.py: a script's own folder is on sys.path

from humandiff.diffusion import pipeline, samplers
from humandiff.models.scd import Models
from humandiff.diffusion.schedules import ScheduleConfig
from humandiff.models.init import numpy_init
from humandiff.models.pose_encoder import PoseEncoder
from humandiff.models.unet import UNet2DConditionModel
from humandiff.ops.attention_config import AttentionConfig

TINY = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
            norm_num_groups=8)
SD15 = dict(cross_attention_dim=768)  # the module defaults are SD-1.5's UNet
# benchmarks/vs_referencenet.py's UNet: 4 levels (64, 128, 256, 256), 8 heads, 2 resnets per block, 34 M parameters.
BENCH = dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, cross_attention_dim=128, attention_head_dim=8,
             norm_num_groups=32)
UNETS = {"tiny": TINY, "bench": BENCH, "sd15": SD15}


def build(unet_name: str, latent: int, key_block: int | None = None):
    """Random UNet + pose encoder (latent space without a VAE: 3 channels so the pipeline's image path applies).

    `key_block`: the XLA attention's `AttentionConfig.xla_key_block` (None: the library default, 512 keys on CPU).
    """
    unet = UNet2DConditionModel(in_channels=3, out_channels=3, **UNETS[unet_name],
                                attention_config=AttentionConfig(xla_key_block=key_block))
    c0 = unet.block_out_channels[0]
    pose = PoseEncoder(out_channels=c0, block_out_channels=(16,))
    x = jax.ShapeDtypeStruct((1, latent, latent, 3), jnp.float32)
    params = {
        "unet": numpy_init(unet, x, jax.ShapeDtypeStruct((1,), jnp.float32),
                           jax.ShapeDtypeStruct((1, 1, unet.cross_attention_dim), jnp.float32)),
        "pose_encoder": numpy_init(pose, x, seed=1),
    }
    return Models(unet=unet, pose_encoder=pose), params


def flops_of(stage) -> float | None:
    """FLOPs from XLA's cost analysis of a `Lowered` or `Compiled` stage (None when unavailable)."""
    cost = stage.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def step_flops(models, params, cfg, inputs) -> tuple[float | None, float | None]:
    """(FLOPs of the per-sample preparation incl. the reference pass, FLOPs of ONE guided denoising step).

    `cost_analysis` counts a `lax.scan` body once, so the whole-sampler numbers cannot give per-step cost; the step
    is measured as cost(prepare + 1 step) - cost(prepare). For the same reason the count runs the UNet with the
    unblocked attention (`xla_key_block=0`): the blocked one scans over key blocks and would be counted one block
    per layer (the same arithmetic either way, up to the online softmax's rescaling).
    """
    unet = models.unet.clone(attention_config=AttentionConfig(xla_key_block=0))
    models = dataclasses.replace(models, unet=unet)
    f = inputs["poses"].shape[1]
    x = jnp.zeros((1, f) + inputs["ref_image"].shape[1:], jnp.float32)
    prep = jax.jit(lambda p, i: jax.tree_util.tree_leaves(
        [pipeline.prepare_condition(models, cfg, p, i).__dict__]))
    one = jax.jit(lambda p, i, x: pipeline.video_prediction(
        models, p, cfg, pipeline.prepare_condition(models, cfg, p, i), x, jnp.float32(500.0), jnp.float32(3.5)))
    a = flops_of(prep.lower(params, inputs))  # HLO cost analysis before compilation: no codegen needed
    b = flops_of(one.lower(params, inputs, x))
    return a, (b - a) if a is not None and b is not None else None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(latent: int, frames: int) -> dict:
    rng = np.random.default_rng(0)
    n, f = latent, frames
    return {"ref_image": jnp.asarray(rng.uniform(-1, 1, (1, n, n, 3)), jnp.float32),
            "ref_pose": jnp.asarray(rng.uniform(0, 1, (1, n, n, 3)), jnp.float32),
            "poses": jnp.asarray(rng.uniform(0, 1, (1, f, n, n, 3)), jnp.float32)}


def unet_part(jax_op: str) -> str:
    """The UNet part an op's JAX name places it in (`profile_step.PARTS`), else "other" (conv_in/out, time
    embedding, up/downsamplers, the guidance arithmetic)."""
    import profile_step  # noqa: PLC0415  benchmarks/profile_step.py

    return next((name for name, key in profile_step.PARTS if key in jax_op), "other")


def unet_level(jax_op: str) -> str:
    """The UNet block an op's JAX name places it in (`down_blocks_i`, `mid_block`, `up_blocks_i`), else "other"."""
    m = re.search(r"/(down_blocks_\d+|mid_block|up_blocks_\d+)/", jax_op)
    return m.group(1) if m else "other"


def _traced(profile_step, compiled, args: tuple, reps: int) -> dict:
    """Warm-up call, then `reps` traced calls of `compiled`: wall seconds per call and the time (and FLOPs) by UNet
    part, by UNet block and by op category."""
    jax.block_until_ready(compiled(*args))
    hlo = profile_step.parse_hlo(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        t0, c0 = time.perf_counter(), time.process_time()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(reps):
                jax.block_until_ready(compiled(*args))
        wall, cpu = (time.perf_counter() - t0) / reps, (time.process_time() - c0) / reps
        events = profile_step.trace_events(trace_dir)
    prof = profile_step.profile(hlo, events, reps, part=unet_part)
    levels = profile_step.profile(hlo, events, reps, part=unet_level)
    prof["top"] = prof["top"][:12]
    return {"traced_wall_s": wall, "traced_cpu_s": cpu, **prof, "levels_s_per_step": levels["parts_s_per_step"],
            "levels_gflop_per_step": levels["parts_gflop_per_step"]}


def profile_steps(models, params, inputs, reps: int) -> dict:
    """Per mode: ONE guided denoising step traced (`_traced`), and for the cached mode its reference pass (the
    preparation, run once per sample) traced apart."""
    import profile_step  # noqa: PLC0415

    f = inputs["poses"].shape[1]
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, f) + inputs["ref_image"].shape[1:]), jnp.float32)
    out = {}
    for mode in ("cached", "joint"):
        cfg = pipeline.SamplingConfig(mode=mode, window=max(16, f))
        prep = jax.jit(lambda p, i, cfg=cfg: pipeline.prepare_condition(models, cfg, p, i).__dict__)
        step = jax.jit(lambda p, c, x, cfg=cfg: pipeline.video_prediction(
            models, p, cfg, pipeline.Condition(**c), x, jnp.float32(500.0), jnp.float32(3.5)))
        prep_compiled = prep.lower(params, inputs).compile()
        cond = jax.block_until_ready(prep_compiled(params, inputs))
        out[mode] = {"step": _traced(profile_step, step.lower(params, cond, x).compile(), (params, cond, x), reps)}
        if mode == "cached":
            out[mode]["prepare"] = _traced(profile_step, prep_compiled, (params, inputs), 1)
        for part, row in out[mode].items():
            print(f"{mode} {part}: {row['traced_wall_s']:.2f} s (traced), CPU {row['traced_cpu_s']:.2f} s; parts "
                  f"{ {k: round(v, 2) for k, v in row['parts_s_per_step'].items()} }; blocks "
                  f"{ {k: round(v, 2) for k, v in row['levels_s_per_step'].items()} }", file=sys.stderr)
    return out


def run(args) -> dict:
    models, params = build(args.unet, args.latent, args.key_block)
    n, f = args.latent, args.frames
    inputs = _inputs(n, f)
    if args.profile:
        flops = {}
        for mode in ("cached", "joint"):
            prep, step = step_flops(models, params, pipeline.SamplingConfig(mode=mode, window=max(16, f)), inputs)
            flops[mode] = {"prepare_flops": prep, "step_flops": step}
        c, j = flops["cached"], flops["joint"]
        return {"config": args.unet, "latent": n, "frames": f, "cfg_branches": 2, "key_block": args.key_block,
                "flops": flops, "steps": args.steps,
                "flop_ratio_joint_over_cached": (j["prepare_flops"] + args.steps * j["step_flops"]) /
                                                (c["prepare_flops"] + args.steps * c["step_flops"]),
                "profiled_steps": args.profile,
                "profile_one_step": profile_steps(models, params, inputs, args.profile),
                "peak_rss_mb": _peak_rss_mb()}
    sampler = samplers.make_sampler(ScheduleConfig(zero_terminal_snr=True, prediction_type="v_prediction"), "ddim",
                                    args.steps)
    key, guidance = jax.random.key(0), jnp.float32(3.5)
    fns, rows = {}, {}
    for mode in ("cached", "joint"):
        cfg = pipeline.SamplingConfig(mode=mode, window=max(16, f))
        jitted = pipeline.make_generator(models, cfg).jitted
        t0 = time.perf_counter()
        compiled = jitted.lower(params, sampler, inputs, key, guidance).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(params, sampler, inputs, key, guidance))  # warm-up
        fns[mode] = compiled
        prep, step = step_flops(models, params, cfg, inputs)
        rows[mode] = {"compile_s": round(compile_s, 2), "prepare_flops": prep, "step_flops": step, "times": [],
                      "cpu_times": []}
        print(f"{mode}: compiled in {compile_s:.1f} s; peak RSS {_peak_rss_mb():.0f} MB", file=sys.stderr)
    for _ in range(args.iters):  # alternate A/B so load drift hits both
        for mode, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()  # CPU time: what the shared core gave this process
            jax.block_until_ready(fn(params, sampler, inputs, key, guidance))
            rows[mode]["times"].append(time.perf_counter() - t0)
            rows[mode]["cpu_times"].append(time.process_time() - c0)
            print(f"{mode}: {rows[mode]['times'][-1]:.2f} s, CPU {rows[mode]['cpu_times'][-1]:.2f} s", file=sys.stderr)
    for row in rows.values():
        row["median_s"] = statistics.median(row["times"])
        row["seconds_per_frame"] = row["median_s"] / f
        row["frames_per_s"] = f / row["median_s"]
    ratio = rows["joint"]["median_s"] / rows["cached"]["median_s"]
    paired = [j / c for c, j in zip(rows["cached"]["times"], rows["joint"]["times"])]
    c, j = rows["cached"], rows["joint"]
    flop_ratio = None
    if None not in (c["prepare_flops"], c["step_flops"], j["prepare_flops"], j["step_flops"]):
        flop_ratio = (j["prepare_flops"] + args.steps * j["step_flops"]) / (c["prepare_flops"] + args.steps *
                                                                            c["step_flops"])
    return {
        "config": args.unet, "latent": n, "frames": f, "steps": args.steps, "cfg_branches": 2,
        "key_block": args.key_block,
        "unet_params": int(sum(x.size for x in jax.tree_util.tree_leaves(params["unet"]))),
        "cached": rows["cached"], "joint": rows["joint"], "speedup_cached_vs_joint": ratio,
        "speedup_paired_median": statistics.median(paired),
        "speedup_of_minima": min(rows["joint"]["times"]) / min(rows["cached"]["times"]),
        "speedup_cpu_time_median": statistics.median(rows["joint"]["cpu_times"]) /
                                   statistics.median(rows["cached"]["cpu_times"]),
        "flop_ratio_joint_over_cached": flop_ratio,
        "ideal_ratio_formula": "joint/cached = 2*S*2F / (2*S*F + 1) UNet entry-passes (S steps, F frames, 2 CFG "
                               "branches; cached adds one reference pass)",
        "ideal_ratio": (2 * args.steps * 2 * f) / (2 * args.steps * f + 1),
        "peak_rss_mb": _peak_rss_mb(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--unet", choices=tuple(UNETS), default="tiny", help="UNet shapes (random weights)")
    p.add_argument("--sd15", action="store_true", help="the same as --unet sd15")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--latent", type=int, default=16, help="latent side (SD-1.5 at 512 px: 64)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/sampler_<backend>.json)")
    p.add_argument("--key", default="", help="entry in the JSON (default: the UNet's name)")
    p.add_argument("--key_block", type=int, default=None,
                   help="AttentionConfig.xla_key_block of the UNet (0: unblocked; default: the library's, 512 on CPU)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="instead of timing whole samples, trace N single guided steps per mode and split their time "
                        "by UNet part (self-attention, resnets, ...) and op category")
    args = p.parse_args(argv)
    args.unet = "sd15" if args.sd15 else args.unet
    result = run(args)
    backend = jax.default_backend()
    result["machine"] = results_io.machine()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"sampler_{backend}.json")
    results_io.merge_into(out, args.key or result["config"], result)
    if args.profile:
        print(f"{result['config']}: FLOP ratio at {args.steps} steps {result['flop_ratio_joint_over_cached']:.3f}; "
              f"per-step profile -> {out}", file=sys.stderr)
        return 0
    c, j = result["cached"], result["joint"]
    print(f"{result['config']}: cached {c['seconds_per_frame']:.4f} s/frame, joint {j['seconds_per_frame']:.4f} "
          f"s/frame, speedup {result['speedup_cached_vs_joint']:.2f}x (paired median "
          f"{result['speedup_paired_median']:.2f}x, of minima {result['speedup_of_minima']:.2f}x; FLOP ratio "
          f"{result['flop_ratio_joint_over_cached']}, ideal {result['ideal_ratio']:.2f}) -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
