r"""XLA:CPU against torch (oneDNN) on the convolution and matmul shapes of the vs_referencenet UNet, fwd + bwd.

    PYTHONPATH=. python benchmarks/conv_floor.py --reps 5 --out benchmarks/results/conv_floor_cpu.json

For each shape: one jitted JAX function computing the op, its input gradient and its weight gradient (as a train
step does), and the same three in torch (forward, `backward`); FLOPs are 3x the forward's (2 * MACs each). Calls of
the two frameworks alternate in one process (medians of `--reps`), so load changes hit both; GFLOP/s per shape and
the XLA / torch time ratio say how much of the train step's gap the convolutions themselves explain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# (batch, side, in channels, out channels, kernel): the UNet's 3x3 convs per level at batch 2 (reference and target
# passes each run batch 2), the 1x1 proj_in/out, and the attention/FF matmuls as 1x1 convs of the same FLOPs.
CONVS = [(2, 32, 64, 64, 3), (2, 16, 128, 128, 3), (2, 8, 256, 256, 3), (2, 4, 256, 256, 3), (2, 32, 128, 64, 3),
         (2, 16, 256, 128, 3)]
MATMULS = [(2 * 1024, 64, 64), (2 * 1024, 64, 512), (2 * 256, 128, 1024), (2 * 64, 256, 2048)]


def _time(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def conv_pair(b, side, cin, cout, k):
    """(jax call, torch call, FLOPs) of conv forward + input grad + weight grad."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, side, side, cin), np.float32)
    w = rng.standard_normal((k, k, cin, cout), np.float32) * 0.05
    ct = rng.standard_normal((b, side, side, cout), np.float32)

    def loss(x, w, ct):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y * ct)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jx, jw, jct = jnp.asarray(x), jnp.asarray(w), jnp.asarray(ct)
    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    tw = torch.tensor(w).permute(3, 2, 0, 1).contiguous().requires_grad_()
    tct = torch.tensor(ct).permute(0, 3, 1, 2).contiguous()

    def t_call():
        tx.grad = tw.grad = None
        torch.nn.functional.conv2d(tx, tw, padding=k // 2).backward(tct)

    return (lambda: jax.block_until_ready(grad(jx, jw, jct))), t_call, 3 * 2.0 * b * side * side * cin * cout * k * k


def matmul_pair(m, k, n):
    """(jax call, torch call, FLOPs) of x @ w with both gradients."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ct = rng.standard_normal((m, n), np.float32)
    grad = jax.jit(jax.grad(lambda x, w, ct: jnp.sum((x @ w) * ct), argnums=(0, 1)))
    jx, jw, jct = jnp.asarray(x), jnp.asarray(w), jnp.asarray(ct)
    tx, tw, tct = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True), torch.tensor(ct)

    def t_call():
        tx.grad = tw.grad = None
        (tx @ tw).backward(tct)

    return (lambda: jax.block_until_ready(grad(jx, jw, jct))), t_call, 3 * 2.0 * m * k * n


def measure(name, pair, reps):
    j_call, t_call, flops = pair
    j_call(), t_call()  # compile / warm up
    jt, tt = [], []
    for _ in range(reps):
        jt += _time(j_call, 1)
        tt += _time(t_call, 1)
    j, t = statistics.median(jt), statistics.median(tt)
    return {"shape": name, "gflop": flops / 1e9, "xla_s": j, "torch_s": t, "xla_gflop_per_s": flops / j / 1e9,
            "torch_gflop_per_s": flops / t / 1e9, "xla_over_torch_time": j / t}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--key", default="default")
    p.add_argument("--out", default=os.path.join(HERE, "results", "conv_floor_cpu.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, HERE)
    import results_io

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = [measure(f"conv b{b} {s}x{s} {ci}->{co} k{k}", conv_pair(b, s, ci, co, k), args.reps)
            for b, s, ci, co, k in CONVS]
    rows += [measure(f"matmul {m}x{k} @ {k}x{n}", matmul_pair(m, k, n), args.reps) for m, k, n in MATMULS]
    for r in rows:
        print(f"{r['shape']:32s} xla {r['xla_gflop_per_s']:7.1f} GFLOP/s  torch {r['torch_gflop_per_s']:7.1f} GFLOP/s"
              f"  xla/torch time {r['xla_over_torch_time']:.2f}")
    results_io.merge_into(args.out, args.key, {"rows": rows, "reps": args.reps, "cpus": sorted(os.sched_getaffinity(0)),
                                               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                                               "machine": results_io.machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
