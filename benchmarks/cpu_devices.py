r"""Train-step time on a CPU host split into 1 vs N JAX devices (`config.mesh.cpu_devices`), measured side by side.

    PYTHONPATH=. python benchmarks/cpu_devices.py --config configs/demo.py --devices 1,2 --rounds 2 \
        --out benchmarks/results/cpu_devices_cpu.json

The device count is fixed when JAX starts, so each measurement is its own `benchmarks/train_step.py` process
(two-pass form, median of --steps timed steps after a warm-up). Device counts are alternated (1, 2, 1, 2, ...)
so machine load affects both alike; the result keeps every process's median and compares the medians of those.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def one_run(config: str, devices: int, steps: int, sets: list[str]) -> dict:
    """One `train_step.py` process with `devices` CPU devices; its two-pass row."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [sys.executable, os.path.join(HERE, "train_step.py"), "--config", config, "--forms", "two_pass",
               "--steps", str(steps), "--cpu_devices", str(devices), "--out", out]
        for s in sets:
            cmd += ["--set", s]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # XLA_FLAGS' device count would win
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(out, encoding="utf-8") as fh:
            result = json.load(fh)
    row = result["forms"]["two_pass"]
    return {"devices": devices, "median_step_s": row["median_step_s"], "samples_per_s": row["samples_per_s"],
            "mfu": row["mfu"], "load_avg_1min": result["load_avg_1min"], "batch_size": result["batch_size"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.py")
    p.add_argument("--devices", default="1,2", help="device counts to compare, comma-separated (first = baseline)")
    p.add_argument("--rounds", type=int, default=2, help="processes per device count, alternated")
    p.add_argument("--steps", type=int, default=10, help="timed steps per process")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", default="benchmarks/results/cpu_devices_cpu.json")
    args = p.parse_args()
    counts = [int(x) for x in args.devices.split(",")]
    runs = [one_run(args.config, n, args.steps, args.set) for _ in range(args.rounds) for n in counts]
    medians = {n: statistics.median(r["median_step_s"] for r in runs if r["devices"] == n) for n in counts}
    result = {"config": args.config, "overrides": args.set, "cores": os.cpu_count(), "runs": runs,
              "median_step_s": {str(n): t for n, t in medians.items()},
              "speedup_over_first": {str(n): medians[counts[0]] / t for n, t in medians.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
