r"""Train-step throughput, FLOPs, MFU and memory; two-pass vs joint training form, measured side by side.

    PYTHONPATH=. python benchmarks/train_step.py --config configs/tiny_test.py --steps 10 \
        --out benchmarks/results/train_step_cpu.json

FLOPs per step come from the compiled step's XLA cost analysis; the peak is a float32 (bf16 with
--compute_dtype=bfloat16) matmul measured in the same run; MFU = (FLOPs / median step time) / peak. Steps of the
two forms are alternated (A, B, A, B, ...) and medians compared, so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp


def matmul_peak(dtype, n: int = 1024, reps: int = 10) -> float:
    """FLOP/s of a jitted n x n matmul (median of `reps` timed calls)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {k: int(getattr(m, k, 0)) for k in keys}


def build(config, workdir):
    """(compiled step, state, frozen, batch) for a config."""
    from humandiff import train
    from humandiff.training import checkpoint, input as train_input, modeling, sharding

    mesh = sharding.make_mesh(config)
    models, pretrained = modeling.build(config)
    ckpt = checkpoint.Checkpointer(workdir, 10 ** 9, 1, async_save=False)
    it = train_input.train_iterator(config)
    state, frozen, state_sh, frozen_sh, _ = train.build_state(config, models, pretrained or {}, mesh, ckpt, it)
    local = next(it)
    t = time.perf_counter()
    compiled = train.compile_step(config, models, mesh, state, frozen, state_sh, frozen_sh, local)
    compile_s = time.perf_counter() - t
    ckpt.close()
    return compiled, state, frozen, train_input.to_global(local, mesh), train.step_rng(0, 0, mesh), compile_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny_test.py")
    p.add_argument("--steps", type=int, default=10, help="timed steps per form")
    p.add_argument("--compute_dtype", default="float32")
    p.add_argument("--out", default="benchmarks/results/train_step_cpu.json")
    args = p.parse_args()
    from humandiff import config_lib

    forms = {}
    for form in ("two_pass", "joint"):
        config = config_lib.load(args.config, {"train.form": form, "train.compute_dtype": args.compute_dtype})
        config.mesh.shape = (-1, 1, 1)
        config_lib.validate(config, jax.device_count())
        with tempfile.TemporaryDirectory() as workdir:
            forms[form] = dict(zip(("compiled", "state", "frozen", "batch", "rng", "compile_s"),
                                   build(config, workdir)))
    times = {form: [] for form in forms}
    for form, f in forms.items():  # warm-up
        f["state"], m = f["compiled"](f["state"], f["frozen"], f["batch"], f["rng"])
        jax.block_until_ready(m)
    for _ in range(args.steps):
        for form, f in forms.items():
            t = time.perf_counter()
            f["state"], m = f["compiled"](f["state"], f["frozen"], f["batch"], f["rng"])
            jax.block_until_ready(m)
            times[form].append(time.perf_counter() - t)
    dtype = jnp.bfloat16 if args.compute_dtype == "bfloat16" else jnp.float32
    peak = matmul_peak(dtype)
    result = {"config": args.config, "batch_size": config.batch_size, "resolution": list(config.data.resolution),
              "compute_dtype": args.compute_dtype, "devices": [str(d) for d in jax.devices()],
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
              "load_avg_1min": os.getloadavg()[0], "matmul_peak_flops_per_s": peak, "forms": {}}
    for form, f in forms.items():
        med = statistics.median(times[form])
        flops = _flops(f["compiled"])
        result["forms"][form] = {"median_step_s": med, "samples_per_s": config.batch_size / med,
                                 "flops_per_step": flops, "achieved_flops_per_s": flops / med,
                                 "mfu": flops / med / peak, "compile_s": f["compile_s"],
                                 "memory": _memory(f["compiled"])}
    result["joint_over_two_pass_time"] = (result["forms"]["joint"]["median_step_s"]
                                          / result["forms"]["two_pass"]["median_step_s"])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
