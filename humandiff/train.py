r"""Train SCD: `python -m humandiff.train --config configs/X.py[:args] --workdir DIR [--config.key=value ...]`.

Reads top to bottom in sections: mesh, input, model, shard, step, ckpt, evals, loop. The step math lives in
`humandiff/training/step.py`; this file wires it to data, checkpoints, metrics and samples.

Multi-process: when the usual cluster environment is present (TPU pod, SLURM, or `JAX_COORDINATOR_ADDRESS` +
`JAX_NUM_PROCESSES` + `JAX_PROCESS_ID` as set by `launch/local_multiprocess.sh`), `jax.distributed.initialize()` runs
first; every process then loads its own share of each global batch.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from humandiff import config_lib
from humandiff.training import checkpoint, input as train_input, modeling, optim, sharding, step as train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and samples.")


CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


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
    if CPU_SCHEDULER_FLAG.split("=")[0] not in current:
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


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _overlay(params: dict, loaded: dict, source: str) -> dict:
    """Replaces leaves of `params` by same-path leaves of `loaded` (shapes must match)."""
    flat = {sharding.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}

    def one(path, leaf):
        key = sharding.path_str(path)
        if key not in flat:
            return leaf
        if tuple(flat[key].shape) != tuple(leaf.shape):
            raise ValueError(f"{source}: {key} has shape {tuple(flat[key].shape)}, model expects {tuple(leaf.shape)}")
        value = np.asarray(flat[key], leaf.dtype)
        # Works on every process of a multi-host mesh (device_put needs addressable devices).
        return jax.make_array_from_callback(value.shape, leaf.sharding, lambda index: value[index])

    return jax.tree_util.tree_map_with_path(one, params)


def _load_init_checkpoint(workdir: str) -> dict:
    """Parameters (EMA if kept) of an earlier stage's latest checkpoint, as host arrays."""
    ckpt = checkpoint.Checkpointer(workdir, every=1, keep=1, async_save=False)
    step = ckpt.latest_step()
    ckpt.close()
    if step is None:
        raise checkpoint.CheckpointError(f"config.model.init_checkpoint={workdir!r} holds no checkpoint")
    try:
        restored = checkpoint.restore_to_host(os.path.join(ckpt.directory, str(step), "state"))
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"config.model.init_checkpoint={workdir!r}: {e}") from e
    return restored["ema"] if restored.get("ema") else restored["params"]


def _state_init(config, models) -> Any:
    """`rng -> (train state, frozen params)`: random init split by the trainable/frozen regexes."""
    key = jax.random.key(config.seed)
    abstract_params = jax.eval_shape(functools.partial(modeling.init_params, models, config), key)
    mask = optim.trainable_mask(abstract_params, tuple(config.optim.trainable), tuple(config.optim.frozen))
    tx = optim.make_optimizer(config)

    def init(rng):
        trainable, frozen = optim.split(modeling.init_params(models, config, rng), mask)
        return train_step.init_state(trainable, tx, config.optim.ema_decay), frozen

    return init


def abstract_state(config, models, mesh, init: Any = None) -> tuple[Any, Any, Any, Any]:
    """Shapes and shardings of the train state and frozen parameters, allocating nothing.

    Returns:
      `(state, frozen, state_shardings, frozen_shardings)`; the first two are `ShapeDtypeStruct` trees that
      `compile_step` accepts, so a step can be compiled before the state exists (lower peak host memory).
    """
    state, frozen = jax.eval_shape(init or _state_init(config, models), jax.random.key(config.seed))
    state_sh = sharding.config_shardings(config, state, mesh)
    frozen_sh = sharding.config_shardings(config, frozen, mesh)
    return _abstract(state, state_sh), _abstract(frozen, frozen_sh), state_sh, frozen_sh


def build_state(config, models, pretrained, mesh, ckpt, data_iter) -> tuple[Any, Any, Any, Any, int]:
    """Initialises (or restores) the sharded train state and the frozen parameters.

    Returns:
      `(state, frozen, state_shardings, frozen_shardings, start_step)`.
    """
    key = jax.random.key(config.seed)
    init = _state_init(config, models)
    state_shapes, frozen_shapes, state_sh, frozen_sh = abstract_state(config, models, mesh, init)
    if jax.process_index() == 0:
        both = {"params": state_shapes["params"], "frozen": frozen_shapes}
        for line in sharding.summary(config, both, {"params": state_sh["params"], "frozen": frozen_sh}):
            logging.info("%s", line)
    state, frozen = jax.jit(init, out_shardings=(state_sh, frozen_sh))(key)
    for name, tree in pretrained.items():  # weights from local diffusers/transformers folders
        state["params"] = _overlay(state["params"], {name: tree}, name)
        frozen = _overlay(frozen, {name: tree}, name)
    if config.model.init_checkpoint:  # an earlier stage's parameters win over the pretrained folders
        loaded = _load_init_checkpoint(config.model.init_checkpoint)
        source = f"config.model.init_checkpoint={config.model.init_checkpoint!r}"
        state["params"] = _overlay(state["params"], loaded, source)
        frozen = _overlay(frozen, loaded, source)
    if pretrained or config.model.init_checkpoint:  # EMA and optimizer start from the loaded weights
        # A copy, never `astype` (a no-op on float32 leaves): params and EMA sharing a buffer breaks donation.
        ema = jax.tree.map(lambda p: jnp.array(p, dtype=jnp.float32, copy=True), state["params"])
        state = dict(state, ema=ema if state["ema"] else {})
    restored = ckpt.restore(state_shapes, data_iter)
    start = 0
    if restored is not None:
        state, start = restored
        saved_frozen = ckpt.restore_frozen(frozen_shapes)
        if saved_frozen is not None:
            frozen = saved_frozen
        logging.info("resumed from %s at step %d", ckpt.directory, start)
    else:
        own_frozen = {k: v for k, v in frozen.items() if k not in pretrained}
        ckpt.save_frozen_once(own_frozen)
    return state, frozen, state_sh, frozen_sh, start


def compile_step(config, models, mesh, state, frozen, state_sh, frozen_sh, example_batch) -> Any:
    """`jax.jit(step, in_shardings, out_shardings, donate_argnums=0)` lowered and compiled ahead of time.

    `state` and `frozen` may be arrays or `ShapeDtypeStruct` trees (`abstract_state`); only shapes are read.
    """
    lowered = lower_step(config, models, mesh, state, frozen, state_sh, frozen_sh, example_batch)
    t0 = time.time()
    compiled = lowered.compile()
    logging.info("train step compiled in %.1f s", time.time() - t0)
    return compiled


def lower_step(config, models, mesh, state, frozen, state_sh, frozen_sh, example_batch) -> jax.stages.Lowered:
    """The jitted step of `compile_step`, lowered (not compiled); arguments as there."""
    tx = optim.make_optimizer(config)
    fn = train_step.make_train_step(models, config, tx, train_step.make_schedule(config))
    batch_abstract = train_input.abstract_batch(example_batch, mesh)
    batch_sh = jax.tree.map(lambda x: x.sharding, batch_abstract)
    rep = sharding.replicated(mesh)
    jitted = jax.jit(fn, in_shardings=(state_sh, frozen_sh, batch_sh, rep), out_shardings=(state_sh, rep),
                     donate_argnums=(0,))
    rng_abstract = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
    return jitted.lower(_abstract(state, state_sh), _abstract(frozen, frozen_sh), batch_abstract, rng_abstract)


@functools.lru_cache(maxsize=8)
def _rng_fn(mesh):
    return jax.jit(lambda seed, step: jax.random.fold_in(jax.random.key(seed), step),
                   out_shardings=sharding.replicated(mesh))


def step_rng(seed: int, step: int, mesh) -> jax.Array:
    """Per-step key, a pure function of (seed, step): resuming at step k reproduces the straight run.

    Made by a jitted function with a replicated output sharding, so it is a global array on every process.
    """
    return _rng_fn(mesh)(np.uint32(seed), np.uint32(step))


def _write_config(workdir: str, config) -> None:
    """`<workdir>/config.json`: the run's resolved config (`humandiff.export` and `humandiff.sample` read it)."""
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, "config.json"))  # never a half-written file


def train_and_evaluate(config, workdir: str, *, models: modeling.Models | None = None,
                       pretrained: dict | None = None, dataset: Any = None, transform: Any = None,
                       sample_fn: Any = None, stop_after: int | None = None, hook: Any = None) -> list[dict]:
    """Runs (or resumes) training to `config.total_steps`; returns the logged metrics (one dict per log step).

    Args:
      config: validated training config.
      workdir: checkpoints (`checkpoints/`, `frozen/`), TensorBoard events (`tb/`) and samples (`samples/`).
      models, pretrained: module bundle and pretrained params (default: `modeling.build(config)`).
      dataset, transform: grain MapDataset of records and per-example transform (default: from config.data).
      sample_fn: `(state, frozen, step, workdir, writer) -> None` writing samples (default: evals for the task).
      stop_after: stop after this many steps of this run *without* a final checkpoint (simulates a hard kill).
      hook: `(step) -> None` called after every step (tests send signals from here).
    """
    # ----------------------------------------------------------------------------------------------- mesh
    config_lib.validate(config, num_devices=jax.device_count())
    mesh = sharding.make_mesh(config)
    is_main = jax.process_index() == 0
    logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(), jax.process_count())
    if is_main:
        _write_config(workdir, config)

    # ---------------------------------------------------------------------------------------------- input
    if dataset is None:
        data_iter = train_input.train_iterator(config)
    else:  # a custom random-access dataset (tests, benchmarks)
        data_iter = train_input.make_iterator(dataset, config.batch_size, seed=config.seed, transform=transform,
                                              worker_threads=config.data.num_threads)

    # ---------------------------------------------------------------------------------------------- model
    if models is None:
        models, pretrained = modeling.build(config)
    pretrained = pretrained or {}

    # ---------------------------------------------------------------------------------------- shard + ckpt
    ckpt = checkpoint.Checkpointer(workdir, config.ckpt.every, config.ckpt.keep, config.ckpt.async_save)
    state, frozen, state_sh, frozen_sh, start = build_state(config, models, pretrained, mesh, ckpt, data_iter)
    logging.info("parameters: %d trainable, %d frozen", modeling.count_params(state["params"]),
                 modeling.count_params(frozen))

    # ----------------------------------------------------------------------------------------------- step
    first = next(data_iter)
    compiled = compile_step(config, models, mesh, state, frozen, state_sh, frozen_sh, first)

    # ---------------------------------------------------------------------------------------------- evals
    from humandiff.training.writer import MetricWriter
    writer = MetricWriter(os.path.join(workdir, "tb"))
    if sample_fn is None:
        from humandiff.training import evals
        sampler = evals.make_sampler_fn(models, config, evals.sampling_mesh(mesh, config.sample.num_videos))
        sample_fn = functools.partial(evals.write_samples, models, config, sample_fn=sampler)  # compiled once

    # ----------------------------------------------------------------------------------------------- loop
    ckpt.install_sigterm_handler()
    from tqdm import tqdm
    bar = tqdm(total=config.total_steps, initial=start, disable=not is_main, dynamic_ncols=True, desc="train")
    history: list[dict] = []
    pending: list = []
    local = first
    t_log, s_log = time.time(), start
    step = start
    try:
        for step in range(start, config.total_steps):
            if local is None:
                local = next(data_iter)
            batch = train_input.to_global(local, mesh)
            local = None
            if config.profile.start_step and step == config.profile.start_step and is_main:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
            state, metrics = compiled(state, frozen, batch, step_rng(config.seed, step, mesh))
            if config.profile.start_step and step == config.profile.start_step + config.profile.num_steps and is_main:
                jax.profiler.stop_trace()
            pending.append(metrics)
            done = step + 1
            if done % config.log_every == 0 or done == config.total_steps:  # the only host sync
                fetched = jax.device_get(pending)
                pending = []
                bad = [done - len(fetched) + 1 + i for i, m in enumerate(fetched) if not m["finite"]]
                if bad and config.train.nan_policy == "stop":
                    raise FloatingPointError(
                        f"non-finite loss or gradient at step {bad[0]} (config.train.nan_policy='stop'); those updates "
                        f"were not applied, so the last checkpoint ({ckpt.latest_step()}) holds finite parameters")
                last = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                last["skipped"] = float(sum(1.0 - m["finite"] for m in fetched))
                last["step"] = done
                history.append(last)
                rate = (done - s_log) / max(time.time() - t_log, 1e-9)
                t_log, s_log = time.time(), done
                writer.scalars(done, dict(last, steps_per_sec=rate, samples_per_sec=rate * config.batch_size))
                if is_main:
                    with open(os.path.join(workdir, "metrics.jsonl"), "a") as fh:
                        fh.write(json.dumps(dict(last, steps_per_sec=rate)) + "\n")
                bar.set_postfix(loss=f"{last['loss']:.4f}", steps_s=f"{rate:.2f}")
            bar.update(1)
            if hook is not None:
                hook(done)
            if ckpt.should_save(done):
                ckpt.save(done, state, data_iter)
            if stop_after is not None and done - start >= stop_after:
                ckpt.wait()
                return history
            if ckpt.stop_requested(done):
                logging.warning("stopping at step %d after a checkpoint (SIGTERM / preemption)", done)
                if ckpt.latest_step() != done:
                    ckpt.save(done, state, data_iter, force=True)
                break
            if config.sample.every and done % config.sample.every == 0 and done < config.total_steps:
                sample_fn(state, frozen, done, workdir, writer)
        else:
            if config.total_steps > start:
                if ckpt.latest_step() != config.total_steps:
                    ckpt.save(config.total_steps, state, data_iter, force=True)
                sample_fn(state, frozen, config.total_steps, workdir, writer)
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    return history


def main(argv) -> None:
    """CLI entry point: parse flags, validate the config, train."""
    del argv
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 brings it back
    config = _CONFIG.value
    use_memory_scheduler_on_cpu()
    use_cpu_devices(config_lib.cpu_devices(config))
    maybe_initialize_distributed()
    config_lib.validate(config, num_devices=jax.device_count())
    from tqdm.contrib.logging import logging_redirect_tqdm
    with logging_redirect_tqdm():
        train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
