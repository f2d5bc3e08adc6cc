r"""Train-step throughput, FLOPs, MFU and memory; two-pass vs joint training form, measured side by side.

    PYTHONPATH=. python benchmarks/train_step.py --config configs/tiny_test.py --steps 10 \
        --out benchmarks/results/train_step_cpu.json

SD-1.5 at 512x512, batch 1, without weight folders (random SD-1.5 UNet, VAE and CLIP ViT-L/14; one form at a time
and no EMA, to keep host memory down; XLA:CPU's compile of this step alone outgrew a 24 GiB host, see
docs/training.md#benchmark):

    PYTHONPATH=. python benchmarks/train_step.py --config configs/sd15_image.py --random_encoders --sequential \
        --steps 2 --compute_dtype bfloat16 --set batch_size=1 --set "data.resolution=(512,512)" \
        --set optim.ema_decay=0.0 --set data.source=synthetic --set data.synthetic.height=512 \
        --set data.synthetic.width=512 --set data.prefetch=2 --set data.num_threads=1 \
        --out benchmarks/results/train_step_sd15_cpu.json

FLOPs per step come from the compiled step's XLA cost analysis; the peak is a float32 (bf16 with
--compute_dtype=bfloat16) matmul measured in the same run; MFU = (FLOPs / median step time) / peak. Steps of the
two forms are alternated (A, B, A, B, ...) and medians compared, so machine load affects both alike; with
--sequential each form is built, timed and freed before the next (for models where two states do not fit).
"""

from __future__ import annotations

import argparse
import ast
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


# CLIP ViT-L/14 with a 768-wide projection: the `image_encoder/` of SD image variations (AnimateAnyone's).
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, projection_dim=768, num_hidden_layers=24,
                    num_attention_heads=16, patch_size=14, image_size=224)


def random_encoders(config) -> dict:
    """SD's VAE (the defaults of our `AutoencoderKL`) and CLIP ViT-L/14 modules, to be initialised randomly."""
    import jax.numpy as jnp

    from humandiff.models.clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection
    from humandiff.models.vae import AutoencoderKL

    dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else jnp.float32
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L14), dtype=dtype,
                                         attention_impl=config.model.attention_impl)
    return {"vae": AutoencoderKL(), "image_encoder": clip}


def build(config, workdir, encoders=None):
    """(compiled step, state, frozen, batch, rng, compile seconds) for a config."""
    from humandiff import train
    from humandiff.training import checkpoint, input as train_input, modeling, sharding

    mesh = sharding.make_mesh(config)
    models, pretrained = modeling.build(config, **(encoders or {}))
    it = train_input.train_iterator(config)
    local = next(it)
    # Compiled from shapes before the state exists: XLA's compile memory and the state's never add up.
    state_shapes, frozen_shapes, state_sh, frozen_sh = train.abstract_state(config, models, mesh)
    t = time.perf_counter()
    compiled = train.compile_step(config, models, mesh, state_shapes, frozen_shapes, state_sh, frozen_sh, local)
    compile_s = time.perf_counter() - t
    ckpt = checkpoint.Checkpointer(workdir, 10 ** 9, 1, async_save=False)
    state, frozen, *_ = train.build_state(config, models, pretrained or {}, mesh, ckpt, it)
    ckpt.close()
    return compiled, state, frozen, train_input.to_global(local, mesh), train.step_rng(0, 0, mesh), compile_s


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
    p.add_argument("--out", default="benchmarks/results/train_step_cpu.json")
    args = p.parse_args()
    from humandiff import config_lib

    overrides = dict(_override(x) for x in args.set)
    forms, times = {}, {}
    for form in ("two_pass", "joint"):
        config = config_lib.load(args.config, {**overrides, "train.form": form,
                                               "train.compute_dtype": args.compute_dtype})
        config.mesh.shape = (-1, 1, 1)
        config_lib.validate(config, jax.device_count())
        encoders = random_encoders(config) if args.random_encoders else None
        with tempfile.TemporaryDirectory() as workdir:
            forms[form] = dict(zip(("compiled", "state", "frozen", "batch", "rng", "compile_s"),
                                   build(config, workdir, encoders)))
        times[form] = []
        if args.sequential:
            f = forms[form]
            _step(f)  # warm-up
            times[form] = [_step(f) for _ in range(args.steps)]
            forms[form] = {"compiled": f["compiled"], "compile_s": f["compile_s"]}  # frees state, frozen, batch
            del f
            gc.collect()
    if not args.sequential:
        for f in forms.values():  # warm-up
            _step(f)
        for _ in range(args.steps):
            for form, f in forms.items():
                times[form].append(_step(f))
    dtype = jnp.bfloat16 if args.compute_dtype == "bfloat16" else jnp.float32
    peak = matmul_peak(dtype)
    result = {"config": args.config, "overrides": {k: repr(v) for k, v in overrides.items()},
              "random_encoders": args.random_encoders, "sequential": args.sequential,
              "batch_size": config.batch_size, "resolution": list(config.data.resolution),
              "compute_dtype": args.compute_dtype, "devices": [str(d) for d in jax.devices()],
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
              "load_avg_1min": os.getloadavg()[0], "matmul_peak_flops_per_s": peak, "forms": {}}
    for form, f in forms.items():
        med = statistics.median(times[form])
        flops = _flops(f["compiled"])
        result["forms"][form] = {"step_s": times[form], "median_step_s": med, "samples_per_s": config.batch_size / med,
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
