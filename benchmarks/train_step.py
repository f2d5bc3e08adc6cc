r"""Train-step throughput, FLOPs, MFU and memory; two-pass vs joint training form, measured side by side.

    PYTHONPATH=. python benchmarks/train_step.py --config configs/tiny_test.py --steps 10 \
        --out benchmarks/results/train_step_cpu.json

SD-1.5 at 512x512, batch 1, without weight folders (random SD-1.5 UNet, VAE and CLIP ViT-L/14). --compile_only
reports FLOPs and XLA's memory analysis (`step_bytes`: what the step needs) without allocating anything; with EMA
this step needs 21.4 GB (docs/training.md#benchmark):

    PYTHONPATH=. python benchmarks/train_step.py --config configs/sd15_image.py --random_encoders --compile_only \
        --compute_dtype bfloat16 --set batch_size=1 --set "data.resolution=(512,512)" --set data.source=synthetic \
        --set data.synthetic.height=512 --set data.synthetic.width=512 --set data.prefetch=2 \
        --set data.num_threads=1 --out benchmarks/results/train_step_sd15_cpu.json

To time it, drop --compile_only and add --sequential (on a 24 GiB host the process peaks at 21.9 GiB; `--set
optim.ema_decay=0.0` leaves out EMA, 3.4 GB).

FLOPs per step come from XLA's cost analysis of the step lowered with all attention queries at once (the timed
executable's own count, `executable_flops`, sees a chunked attention loop's body once); the peak is a float32 (bf16
with --compute_dtype=bfloat16) matmul measured in the same run; MFU = (FLOPs / median step time) / peak. Steps of the
two forms are alternated (A, B, A, B, ...) and medians compared, so machine load affects both alike; with
--sequential each form is built, timed and freed before the next (for models where two states do not fit).
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import gc
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


def _flops(staged) -> float:
    cost = staged.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def step_flops(config, encoders, mesh, example_batch) -> float:
    """FLOPs of one step: XLA's cost analysis of the step lowered with all attention queries at once.

    Not the timed executable's own count: with more queries than `model.attention_query_chunk`, XLA attention runs
    its chunks in a loop whose body the cost analysis counts once. Lowering only; nothing is compiled or allocated.
    """
    from humandiff.training import modeling, state as state_lib

    whole = config.copy_and_resolve_references()
    whole.model.attention_query_chunk = 0
    models, _ = modeling.build(whole, **(encoders or {}))
    shapes = state_lib.abstract_state(whole, models, mesh)
    return _flops(state_lib.lower_step(whole, models, mesh, *shapes, example_batch))


def _memory(compiled) -> dict:
    """XLA's memory analysis; `step_bytes` = arguments + temporaries + outputs not aliased to (donated) arguments."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
    out = {k: int(getattr(m, k, 0)) for k in keys}
    out["step_bytes"] = (out["argument_size_in_bytes"] + out["temp_size_in_bytes"] + out["output_size_in_bytes"]
                         - out["alias_size_in_bytes"])
    return out


def _host_memory() -> int | None:
    """Total host memory in bytes (Linux), for reading `step_bytes` against."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# CLIP ViT-L/14 with a 768-wide projection: the `image_encoder/` of SD image variations (AnimateAnyone's).
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, projection_dim=768, num_hidden_layers=24,
                    num_attention_heads=16, patch_size=14, image_size=224)


def random_encoders(config) -> dict:
    """SD's VAE (the defaults of our `AutoencoderKL`) and CLIP ViT-L/14 modules, to be initialised randomly."""
    from humandiff.models.clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection
    from humandiff.models.vae import AutoencoderKL
    from humandiff.training import modeling

    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L14), dtype=modeling.compute_dtype(config),
                                         attention_impl=config.model.attention_impl)
    return {"vae": AutoencoderKL(), "image_encoder": clip}


def release_freed_memory() -> None:
    """Returns memory freed by earlier phases (compiling, saving) to the OS, where glibc kept it for reuse; the
    step's own allocations then fit where they otherwise would not. A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def resident_mb() -> dict:
    """This process's resident set now (`rss`) and its peak since the last `end_phase` (`peak`), in MB (Linux
    /proc/self/status; {} elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            fields = dict(line.split(":", 1) for line in fh if line.startswith(("VmRSS", "VmHWM")))
    except OSError:
        return {}
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}


def end_phase(phases: dict | None, name: str) -> None:
    """Records `resident_mb()` as phase `name` of `phases` and restarts the peak count (Linux `clear_refs` 5), so the
    next phase's peak is its own. It also resets `ru_maxrss`: the process's peak is then `max_phase_peak(phases)`."""
    if phases is None:
        return
    phases[name] = resident_mb()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        pass


def max_phase_peak(phases: dict) -> float:
    """The process's peak RSS in MB over the phases recorded so far."""
    return max((p.get("peak", 0.0) for p in phases.values()), default=0.0)


def build(config, workdir, encoders=None, allocate: bool = True, count_flops: bool = True,
          phases: dict | None = None) -> dict:
    """The compiled step, compile seconds and step FLOPs; with `allocate`, also state, frozen, batch and rng.

    `count_flops=False` leaves out the FLOP count (`flops` None): lowering the whole step once more holds a second
    copy of it in memory, which the trainer never does, so a process that measures its peak RSS skips it. With
    `phases` (a dict), each phase's RSS and own peak are recorded there (`end_phase`): "model" (modules, first
    batch, abstract state), "compile" (lowering + XLA, or a load from the compilation cache), "trim", "state"."""
    from humandiff.training import checkpoint, input as train_input, modeling, runtime, sharding, state as state_lib

    mesh = sharding.make_mesh(config)
    models, pretrained = modeling.build(config, **(encoders or {}))
    it = train_input.train_iterator(config)
    local = next(it)
    # Compiled from shapes before the state exists: XLA's compile memory and the state's never add up.
    state_shapes, frozen_shapes, state_sh, frozen_sh = state_lib.abstract_state(config, models, mesh)
    end_phase(phases, "model")
    t = time.perf_counter()
    compiled = state_lib.compile_step(config, models, mesh, state_shapes, frozen_shapes, state_sh, frozen_sh, local)
    compile_s = time.perf_counter() - t
    end_phase(phases, "compile")
    flops = step_flops(config, encoders, mesh, local) if count_flops else None
    built = {"compiled": compiled, "compile_s": compile_s, "flops": flops}
    if allocate:
        release_freed_memory()  # the compiler's heap: 1.7 GB for SD-1.5
        end_phase(phases, "trim")
        ckpt = checkpoint.Checkpointer(workdir, 10 ** 9, 1, async_save=False)
        built["state"], built["frozen"], *_ = state_lib.build_state(config, models, pretrained or {}, mesh, ckpt, it)
        ckpt.close()
        release_freed_memory()  # saving the frozen weights: 0.9 GB
        built.update(batch=train_input.to_global(local, mesh), rng=runtime.step_rng(0, 0, mesh))
        end_phase(phases, "state")
    return built


def _override(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise SystemExit(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def _step(f) -> float:
    t = time.perf_counter()
    f["state"], m = f["compiled"](f["state"], f["frozen"], f["batch"], f["rng"])
    jax.block_until_ready(m)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny_test.py")
    p.add_argument("--steps", type=int, default=10, help="timed steps per form")
    p.add_argument("--compute_dtype", default="float32")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as --config.KEY=VALUE in the trainer (repeatable)")
    p.add_argument("--random_encoders", action="store_true",
                   help="random SD VAE + CLIP ViT-L/14 instead of model.vae_dir / model.image_encoder_dir")
    p.add_argument("--sequential", action="store_true", help="build, time and free one form at a time")
    p.add_argument("--compile_only", action="store_true",
                   help="compile each form and report FLOPs and XLA's memory analysis; allocate and time nothing")
    p.add_argument("--forms", default="two_pass,joint", help="training forms to time, comma-separated")
    p.add_argument("--cpu_devices", type=int, default=0,
                   help="split the CPU into this many devices, as config.mesh.cpu_devices does (0 = JAX's default)")
    p.add_argument("--out", default="benchmarks/results/train_step_cpu.json")
    args = p.parse_args()
    from humandiff import config_lib
    from humandiff.training import modeling, runtime

    runtime.use_memory_scheduler_on_cpu()  # as the trainer does
    runtime.use_cpu_devices(args.cpu_devices)

    overrides = dict(_override(x) for x in args.set)
    forms, times = {}, {}
    for form in args.forms.split(","):
        config = config_lib.load(args.config, {**overrides, "train.form": form,
                                               "train.compute_dtype": args.compute_dtype})
        config.mesh.shape = (-1, 1, 1)
        config_lib.validate(config, jax.device_count())
        encoders = random_encoders(config) if args.random_encoders else None
        with tempfile.TemporaryDirectory() as workdir:
            forms[form] = build(config, workdir, encoders, allocate=not args.compile_only)
        times[form] = []
        if args.sequential and not args.compile_only:
            f = forms[form]
            _step(f)  # warm-up
            times[form] = [_step(f) for _ in range(args.steps)]
            forms[form] = {k: f[k] for k in ("compiled", "compile_s", "flops")}  # frees state, frozen, batch
            del f
            gc.collect()
    if not (args.sequential or args.compile_only):
        for f in forms.values():  # warm-up
            _step(f)
        for _ in range(args.steps):
            for form, f in forms.items():
                times[form].append(_step(f))
    peak = matmul_peak(modeling.compute_dtype(config))  # the last form's config: same compute dtype
    result = {"config": args.config, "overrides": {k: repr(v) for k, v in overrides.items()},
              "random_encoders": args.random_encoders, "sequential": args.sequential,
              "compile_only": args.compile_only, "host_memory_bytes": _host_memory(),
              "batch_size": config.batch_size, "resolution": list(config.data.resolution),
              "compute_dtype": args.compute_dtype, "devices": [str(d) for d in jax.devices()],
              "cpu_devices": args.cpu_devices,
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
              "load_avg_1min": os.getloadavg()[0], "matmul_peak_flops_per_s": peak, "forms": {}}
    for form, f in forms.items():
        row = {"flops_per_step": f["flops"], "executable_flops": _flops(f["compiled"]), "compile_s": f["compile_s"],
               "memory": _memory(f["compiled"])}
        if times[form]:
            med = statistics.median(times[form])
            row.update(step_s=times[form], median_step_s=med, samples_per_s=config.batch_size / med,
                       achieved_flops_per_s=f["flops"] / med, mfu=f["flops"] / med / peak)
        result["forms"][form] = row
    if all(times.values()) and {"two_pass", "joint"} <= set(times):
        result["joint_over_two_pass_time"] = (result["forms"]["joint"]["median_step_s"]
                                              / result["forms"]["two_pass"]["median_step_s"])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
