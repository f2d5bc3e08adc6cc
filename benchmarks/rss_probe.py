"""Where the humandiff side of `vs_referencenet.py` keeps its resident memory once the step is compiled.

    PYTHONPATH=. nice -n 10 taskset -c 1 python benchmarks/rss_probe.py      # one process, ~10-35 min on one core

Builds and compiles the benchmark's step exactly as `vs_referencenet.py`'s humandiff side does
(`train_step.build` with its phases: import, model, compile), allocates nothing, and then records the resident set
after each of: returning freed heap to the OS (`trim`), `jax.clear_caches()` (JAX's tracing and lowering caches),
and deleting the compiled executable. The last difference is the loaded XLA:CPU executable's own resident size.
Writes `benchmarks/results/rss_probe_cpu.json`.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import results_io  # noqa: E402
import train_step as bench  # noqa: E402


def main() -> None:
    phases: dict = {}
    bench.end_phase(phases, "import")
    import jax

    import vs_referencenet

    config = vs_referencenet._humandiff_config(vs_referencenet.humandiff_overrides({}), None)
    with tempfile.TemporaryDirectory() as workdir:
        built = bench.build(config, workdir, {"vae": vs_referencenet._channel_pad()}, allocate=False,
                            count_flops=False, phases=phases)
    bench.release_freed_memory()
    bench.end_phase(phases, "trim")
    jax.clear_caches()
    gc.collect()
    bench.release_freed_memory()
    bench.end_phase(phases, "clear_caches")
    del built["compiled"]
    gc.collect()
    bench.release_freed_memory()
    bench.end_phase(phases, "executable_deleted")
    results_io.merge_into(os.path.join(HERE, "results", "rss_probe_cpu.json"), "default",
                          {"machine": results_io.machine(), "rss_phases_mb": phases})
    for name, mb in phases.items():
        print(f"{name:20s} rss {mb.get('rss', 0):8.0f} MB   own peak {mb.get('peak', 0):8.0f} MB")


if __name__ == "__main__":
    main()
