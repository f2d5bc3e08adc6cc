"""Process set-up before JAX starts (XLA:CPU scheduler, CPU device count, persistent compilation cache,
multi-process initialisation), the per-step random key, and the trainer's start-up lines for the person at the
terminal (`announce`, `describe`).

The `use_*` / `maybe_*` functions only take effect before JAX's first computation; the trainer
(`humandiff/train.py`), the benchmarks and the held-out evaluation CLI call them first thing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator

import jax
import numpy as np

from humandiff.training import sharding

CPU_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
# Either spelling in XLA_FLAGS is the user's choice; the second is deprecated in jaxlib 0.10 (still honoured).
_SCHEDULER_FLAGS = ("--xla_cpu_scheduler_type", "--xla_cpu_enable_concurrency_optimized_scheduler")


def use_memory_scheduler_on_cpu() -> None:
    """Selects XLA:CPU's memory-minimising instruction scheduler for this process (XLA_FLAGS), unless XLA_FLAGS
    already chooses one. Only effective before JAX's first computation: XLA reads XLA_FLAGS once.

    The default scheduler orders a step for concurrency: it starts the weight-only work (the transposed and
    reversed kernels of the backward convolutions, bf16 casts) early, and all of it stays live until the backward
    pass. With the memory-minimising one, SD-1.5's 512x512 bf16 step needs 6.2 GB of temporaries instead of
    10.8 GB, and the demo's 0.49 GB instead of 0.87 GB, at the same step time (docs/training.md#benchmark).
    GPU and TPU compiles ignore the flag.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if not any(flag in current for flag in _SCHEDULER_FLAGS):
        os.environ["XLA_FLAGS"] = f"{current} {CPU_SCHEDULER_FLAG}".strip()


def use_cpu_devices(count: int) -> None:
    """Splits the host CPU into `count` JAX devices (`jax_num_cpu_devices`), unless XLA_FLAGS already fixes the
    count (`--xla_force_host_platform_device_count`, as tests and launch/local_multiprocess.sh set it). 0 leaves
    JAX's default (one device). Only effective before JAX's first computation; GPU and TPU devices are unaffected.

    The data axis then runs each device's share of the batch on its own thread. The demo's step is a long chain of
    small kernels that one device cannot spread over the cores: on 2 cores, 2 devices run it 1.30 times as fast as
    one (benchmarks/cpu_devices.py).
    """
    if count and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", int(count))


def compilation_cache_dir(setting: str, workdir: str) -> str:
    """The folder of `config.train.compilation_cache_dir`: a relative path is under `workdir`, an absolute one (or a
    URL such as gs://...) is used as given; "" stays "" (no cache)."""
    if not setting:
        return ""
    return setting if "://" in setting or os.path.isabs(setting) else os.path.join(workdir, setting)


def use_compilation_cache(path: str) -> None:
    """Points JAX's persistent compilation cache at `path`, or turns the cache off when `path` is "" (also when
    JAX_COMPILATION_CACHE_DIR is set: "" means this process writes no cache). Call before JAX's first compile.

    A process that finds its train step there loads the executable instead of compiling it: a restarted run skips
    the compile (the demo benchmark's step: 76-85 s to compile on one loaded CPU core) and the compiler's memory
    peak (docs/results.md, issue 24). JAX's own threshold stays: only compiles that took at least
    `jax_persistent_cache_min_compile_time_secs` (1 s by default) are written. Only process 0 writes; the others
    read, so on several hosts the folder must be one they share (as the checkpoints are).

    Raises:
      NotADirectoryError: `path` exists and is not a folder.
    """
    if not path:
        jax.config.update("jax_enable_compilation_cache", False)
        return
    if "://" not in path and os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"config.train.compilation_cache_dir: {path} is a file, not a folder; pass another "
                                 "path, or '' for no compilation cache")
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)


@contextlib.contextmanager
def compilation_cache_events() -> Iterator[dict]:
    """Counts JAX's persistent-cache monitoring events inside the block, by name (`cache_hits`: an executable
    loaded from the cache instead of compiled; `cache_misses`, ...)."""
    counts: dict = {}

    def listen(event: str, **kwargs) -> None:
        if event.startswith("/jax/compilation_cache/"):
            name = event.rsplit("/", 1)[-1]
            counts[name] = counts.get(name, 0) + 1

    jax.monitoring.register_event_listener(listen)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_listener(listen)


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when a multi-process environment is detected (idempotent enough)."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
        if env.get("JAX_PLATFORMS", "") == "cpu" or env.get("HUMANDIFF_CPU_COLLECTIVES"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                                   int(env["JAX_PROCESS_ID"]))
    elif "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
    elif env.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
        jax.distributed.initialize()


@functools.lru_cache(maxsize=8)
def _rng_fn(mesh):
    return jax.jit(lambda seed, step: jax.random.fold_in(jax.random.key(seed), step),
                   out_shardings=sharding.replicated(mesh))


def step_rng(seed: int, step: int, mesh) -> jax.Array:
    """Per-step key, a pure function of (seed, step): resuming at step k reproduces the straight run.

    Made by a jitted function with a replicated output sharding, so it is a global array on every process.
    """
    return _rng_fn(mesh)(np.uint32(seed), np.uint32(step))


def announce(message: str) -> None:
    """Prints a start-up line (what is built, compiled, resumed) to stderr on process 0.

    A plain print, not absl INFO: `python -m humandiff.train` sets the log verbosity to WARNING (Orbax logs every
    save at INFO), which would hide it, and these lines come before the progress bar exists.
    """
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def describe(config, mesh) -> str:
    """One line: the task, the model, the data, the run's length and the mesh it trains on."""
    model = config.model
    unet = f"UNet from {model.unet_dir}" if model.get("unet_dir") else \
        f"UNet {tuple(model.unet.get('block_out_channels', ()))}"
    space = f"latent space (VAE {model.vae_dir})" if model.get("vae_dir") else "pixel space"
    data = config.data.get("name") or config.data.source
    height, width = config.data.resolution
    return (f"building the {config.get('task', 'image')} model: {unet}, {space}, {model.interaction} interaction; "
            f"data {data} at {height}x{width}, batch {config.batch_size}, {config.total_steps} steps; "
            f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} device(s), "
            f"{jax.process_count()} process(es)")
