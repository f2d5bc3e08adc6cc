"""Where the humandiff side of `vs_referencenet.py` keeps its resident memory once the step is compiled.

    PYTHONPATH=. nice -n 10 taskset -c 1 python benchmarks/rss_probe.py      # one process, 2-35 min on one core
    XLA_FLAGS=--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE PYTHONPATH=. python benchmarks/rss_probe.py --key fast

Builds and compiles the benchmark's step exactly as `vs_referencenet.py`'s humandiff side does
(`train_step.build` with its phases: import, model, compile), allocates nothing, and then records the resident set
after each of: returning freed heap to the OS (`trim`), `jax.clear_caches()` (JAX's tracing and lowering caches),
and deleting the compiled executable. The last difference is the loaded XLA:CPU executable's own resident size.
Also records XLA's memory analysis of the step, its optimised HLO's instruction count and the XLA_FLAGS it was
compiled under (the trainer's scheduler flag is added as the trainer adds it). Writes
`benchmarks/results/rss_probe_cpu.json` under `--key`.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import profile_step  # noqa: E402
import results_io  # noqa: E402
import train_step as bench  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", default="default", help="entry of this run in the JSON")
    args = p.parse_args()
    from humandiff.training import runtime

    runtime.use_memory_scheduler_on_cpu()  # as the trainer (and vs_referencenet's humandiff side) does
    phases: dict = {}
    bench.end_phase(phases, "import")
    import jax

    import vs_referencenet

    config = vs_referencenet._humandiff_config(vs_referencenet.humandiff_overrides({}), None)
    with tempfile.TemporaryDirectory() as workdir:
        built = bench.build(config, workdir, {"vae": vs_referencenet._channel_pad()}, allocate=False,
                            count_flops=False, phases=phases)
    built_s = built["compile_s"]
    memory = bench._memory(built["compiled"])
    # Fused computations included; the module's text is freed before "trim" is recorded.
    instructions = len(profile_step.parse_hlo(built["compiled"].as_text()))
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
    executable_mb = phases["clear_caches"]["rss"] - phases["executable_deleted"]["rss"]
    results_io.merge_into(os.path.join(HERE, "results", "rss_probe_cpu.json"), args.key,
                          {"machine": results_io.machine(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                           "compile_s": built_s, "xla_memory": memory, "hlo_instructions": instructions,
                           "executable_resident_mb": executable_mb, "rss_phases_mb": phases})
    for name, mb in phases.items():
        print(f"{name:20s} rss {mb.get('rss', 0):8.0f} MB   own peak {mb.get('peak', 0):8.0f} MB")
    print(f"{instructions} HLO instructions, executable ~{executable_mb:.0f} MB resident "
          f"({executable_mb * 2 ** 20 / instructions:.0f} bytes each), {memory['temp_size_in_bytes'] / 2 ** 20:.0f} MB "
          f"of XLA temporaries, compiled in {built_s:.1f} s")


if __name__ == "__main__":
    main()
