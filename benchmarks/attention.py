"""Times every attention implementation available on this backend at SD-1.5 self-attention shapes.

    PYTHONPATH=. python benchmarks/attention.py            # full SD-1.5 set (accelerator)
    PYTHONPATH=. python benchmarks/attention.py --quick    # reduced set, about a minute on a CPU

Shapes per image (heads 8): 512x512 -> 4096/1024/256 tokens at head dims 40/80/160; 768x768 -> 9216/2304/576.
Modes: `joint` = one call over `[ref ; tgt]` (2N tokens, causal reference-first mask), forward and forward+backward;
`cached` = the target pass of the two-stage form (N target queries against the N cached reference + N target keys),
forward. FLOPs are counted, not measured: only QK^T and PV, 4*Lq*Lk*D per head over the query/key pairs the mask
allows (joint causal: R*R + T*(R+T) pairs; cached: T*(R+T)); forward+backward counts 3x the forward (dV, dP, dQ,
dK; flash recomputation of the logits is not counted). Each row is the median of `--iters` timed calls after one
compile and one warm-up call. A matmul peak (one large matmul in the benchmark dtype) is measured in the same run.
Rows: `xla` (`jax.nn.dot_product_attention`), `xla_blocked` (the XLA path blocked over 1024-key blocks,
`AttentionConfig.xla_key_block`), `cudnn` (GPU), splash fused / two-pass (TPU; Pallas interpret mode on CPU).
Writes benchmarks/results/attention_<backend>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import numpy as np

from humandiff.ops import attention as attn
from humandiff.ops import splash

FULL_SHAPES = [(512, 4096, 40), (512, 1024, 80), (512, 256, 160), (768, 9216, 40), (768, 2304, 80), (768, 576, 160)]
QUICK_SHAPES = [(512, 1024, 40), (512, 256, 80), (512, 256, 160)]  # CPU: the lower SD-1.5 levels only
QUICK_INTERPRET_MAX_TOKENS = 256  # interpret mode is a simulator: only the smallest shapes


def implementations(backend: str) -> dict[str, tuple[str, attn.AttentionConfig]]:
    """name -> (impl, config) for the implementations that run natively (or, on CPU, in interpret mode)."""
    base = attn.AttentionConfig()
    impls = {"xla": ("xla", base), "xla_blocked": ("xla", base.replace(xla_key_block=1024))}
    if backend == "gpu":
        impls["cudnn"] = ("cudnn", base)
    splash_impl = "splash" if backend == "tpu" else "interpret"
    impls[f"{splash_impl}_fused"] = (splash_impl, base)
    impls[f"{splash_impl}_two_pass"] = (splash_impl, base.replace(splash_variant="two_pass"))
    return impls


def counted_flops(mode: str, batch: int, heads: int, n: int, d: int) -> float:
    pairs = n * n + n * 2 * n  # ref rows see N keys, target rows 2N
    if mode == "cached":
        pairs = n * 2 * n
    flops = 4.0 * pairs * d * heads * batch
    return 3.0 * flops if mode == "joint_fwd_bwd" else flops


def build(mode: str, impl: str, config, batch: int, heads: int, n: int, d: int, dtype):
    """A jitted function and its arguments for one benchmark row."""
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    if mode == "cached":
        q, k, v, k_ref, v_ref = (jax.random.normal(key, (batch, n, heads, d), dtype) for key in keys)
        fn = jax.jit(lambda *a: attn.attention_cached(*a, impl=impl, config=config))
        return fn, (q, k, v, k_ref, v_ref)
    q, k, v, ct = (jax.random.normal(key, (batch, 2 * n, heads, d), dtype) for key in keys[:4])

    def fwd(q, k, v):
        return attn.attention(q, k, v, n_ref=n, impl=impl, config=config)

    if mode == "joint_fwd":
        return jax.jit(fwd), (q, k, v)

    def fwd_bwd(q, k, v, ct):
        out, vjp = jax.vjp(fwd, q, k, v)
        return out, vjp(ct)

    return jax.jit(fwd_bwd), (q, k, v, ct)


def time_call(fn, args, iters: int) -> tuple[float, float]:
    """(compile seconds, median seconds per call)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def matmul_peak(dtype, size: int, iters: int) -> float:
    """Achieved TFLOP/s of one `size`^3 matmul in `dtype` (the machine's practical peak for this run)."""
    a = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
    _, seconds = time_call(jax.jit(lambda x, y: x @ y), (a, a), iters)
    return 2.0 * size**3 / seconds / 1e12


def tile_plans(heads: int) -> list[dict]:
    """The fused splash kernel's tile plan at every SD-1.5 shape (host-side mask processing only, any backend)."""
    plans = []
    config = attn.AttentionConfig()
    for image, n, _ in FULL_SHAPES:
        seg, block_sizes = splash.fused_plan(n, n, config)
        mask = splash.build_mask(seg, seg, causal=True)
        maps = splash.block_maps(splash.make_kernel(mask, heads, block_sizes, True), mask.shape)
        plan = {"image": image, "tokens_per_image": n, "padded_length": seg.length, "block_q": block_sizes.block_q,
                "block_kv": block_sizes.block_kv, "block_kv_compute": block_sizes.block_kv_compute}
        for name, tiles in maps.items():
            plan[f"{name}_skipped_fraction"] = float(np.mean(tiles == 0))
            plan[f"{name}_partial_tiles"] = int(np.sum(tiles == 1))
        plans.append(plan)
        print(f"fused tile plan {image}^2 N={n}: padded {seg.length}, tiles {block_sizes.block_q}/"
              f"{block_sizes.block_kv}, skipped fwd {plan['fwd_skipped_fraction']:.3f} "
              f"dq {plan['dq_skipped_fraction']:.3f} dkv {plan['dkv_skipped_fraction']:.3f}, "
              f"partial {plan['fwd_partial_tiles']}")
    return plans


def machine() -> dict:
    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0]}


def run(args) -> dict:
    backend = jax.default_backend()
    dtype = jnp.float32 if backend == "cpu" else jnp.bfloat16
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    modes = ["joint_fwd", "joint_fwd_bwd", "cached"]
    rows = []
    header = f"{'image':>5} {'N':>5} {'D':>3} {'mode':<13} {'impl':<20} {'ms':>9} {'TFLOP/s':>8} {'compile s':>9}"
    print(header)
    for image, n, d in shapes:
        for mode in modes:
            for name, (impl, config) in implementations(backend).items():
                if impl == "interpret" and args.quick and n > QUICK_INTERPRET_MAX_TOKENS:
                    continue
                if mode == "cached" and name.endswith("two_pass"):  # the cached target pass is one kernel either way
                    continue
                if mode == "cached":
                    name = name.removesuffix("_fused")
                row = {"image": image, "tokens_per_image": n, "head_dim": d, "heads": args.heads,
                       "batch": args.batch, "mode": mode, "impl": name, "dtype": jnp.dtype(dtype).name,
                       "counted_flops": counted_flops(mode, args.batch, args.heads, n, d)}
                try:
                    fn, fargs = build(mode, impl, config, args.batch, args.heads, n, d, dtype)
                    compile_s, seconds = time_call(fn, fargs, args.iters)
                except (RuntimeError, ValueError, MemoryError) as err:  # e.g. XLA out of memory at 768^2
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                    print(f"{image:>5} {n:>5} {d:>3} {mode:<13} {name:<20} failed: {row['error'][:80]}")
                    rows.append(row)
                    continue
                row.update(seconds=seconds, compile_seconds=compile_s,
                           tflops=row["counted_flops"] / seconds / 1e12)
                rows.append(row)
                print(f"{image:>5} {n:>5} {d:>3} {mode:<13} {name:<20} {seconds * 1e3:9.2f} "
                      f"{row['tflops']:8.3f} {compile_s:9.2f}", flush=True)
    peak = matmul_peak(dtype, 1024 if backend == "cpu" else 8192, args.iters)
    print(f"matmul peak ({jnp.dtype(dtype).name}): {peak:.3f} TFLOP/s")
    notes = ("interpret_* rows time the Pallas interpret-mode simulator on the host, not a kernel: they show the "
             "TPU code path runs, not its speed. CPU runs share the machine's cores with other jobs.")
    return {"machine": machine(), "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick,
            "iters": args.iters, "matmul_peak_tflops": peak,
            "notes": notes, "fused_tile_plans": tile_plans(args.heads),
            "flop_count": __doc__.split("FLOPs are counted, not measured: ")[1].split(" Each row")[0],
            "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced shape set (CPU)")
    parser.add_argument("--batch", type=int, default=1, help="reference/target pairs per call")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5, help="timed calls per row (median reported)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/attention_<backend>.json)")
    args = parser.parse_args(argv)
    result = run(args)
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"attention_{jax.default_backend()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
