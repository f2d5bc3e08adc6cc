r"""Train SCD: `python -m humandiff.train --config configs/X.py[:args] --workdir DIR [--config.key=value ...]`.

Reads top to bottom in sections: mesh, input, model, shard + ckpt, evals, step, loop. The step math lives in
`humandiff/training/step.py`, state init / restore and the step's compilation in `humandiff/training/state.py`, the
process set-up in `humandiff/training/runtime.py`; this file wires them to data, checkpoints, metrics and
the evaluations (`humandiff/training/evals.py`).

Multi-process: when the usual cluster environment is present (TPU pod, SLURM, or `JAX_COORDINATOR_ADDRESS` +
`JAX_NUM_PROCESSES` + `JAX_PROCESS_ID` as set by `launch/local_multiprocess.sh`), `jax.distributed.initialize()` runs
first; every process then loads its own share of each global batch.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from humandiff import cli, config_lib
from humandiff.training import checkpoint, evals, input as train_input, modeling, runtime, sharding, state as state_lib
from humandiff.training.writer import MetricWriter

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and evaluations.")
_DEBUG = flags.DEFINE_bool("debug", False, "On an error, show its traceback too.")


def train_and_evaluate(config, workdir: str, *, models: modeling.Models | None = None,
                       pretrained: dict | None = None, dataset: Any = None, transform: Any = None,
                       evaluators: dict | None = None, stop_after: int | None = None, hook: Any = None) -> list[dict]:
    """Runs (or resumes) training to `config.total_steps`; returns the logged metrics (one dict per log step).

    Args:
      config: validated training config.
      workdir: checkpoints (`checkpoints/`, `frozen/`), TensorBoard events (`tb/`) and evaluations (`evals/`).
      models, pretrained: module bundle and pretrained params (default: `modeling.build(config)`).
      dataset, transform: grain MapDataset of records and per-example transform (default: from config.data).
      evaluators: name -> evaluator (`evals.build`; default: those of `config.evals`; `{}`: none).
      stop_after: stop after this many steps of this run *without* a final checkpoint (simulates a hard kill).
      hook: `(step) -> None` called after every step (tests send signals from here).
    """
    # ----------------------------------------------------------------------------------------------- mesh
    config_lib.validate(config, num_devices=jax.device_count())
    mesh = sharding.make_mesh(config)
    is_main = jax.process_index() == 0
    runtime.announce(runtime.describe(config, mesh))

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
    state, frozen, state_sh, frozen_sh, start = state_lib.build_state(config, models, pretrained, mesh, ckpt, data_iter)
    runtime.announce(f"parameters: {modeling.count_params(state['params']):,} trainable, "
                     f"{modeling.count_params(frozen):,} frozen")
    if start >= config.total_steps:  # nothing to train: no evaluators, no compile, no full progress bar
        runtime.announce(f"finished: {workdir} already holds step {start} (config.total_steps={config.total_steps}); "
                         "nothing to train. Raise --config.total_steps to train further, or pass another --workdir")
        ckpt.close()
        return []
    runtime.announce(f"resuming from step {start} of {config.total_steps} ({ckpt.directory})" if start else
                     f"starting at step 0 of {config.total_steps}")

    # ---------------------------------------------------------------------------------------------- evals
    if evaluators is None:  # their held-out data is read now, before the step compiles; they compile once
        if config.evals:
            runtime.announce(f"building the evaluations ({', '.join(config.evals)}): reading their held-out data ...")
        evaluators = evals.build(models, config, mesh)
    if is_main:  # only now: a run refused by the workdir's checkpoint or its evaluations leaves config.json as it was
        state_lib.write_config(workdir, config)

    # ----------------------------------------------------------------------------------------------- step
    first = next(data_iter)
    runtime.announce("compiling the train step ...")
    t0 = time.time()
    with runtime.compilation_cache_events() as events:
        compiled = state_lib.compile_step(config, models, mesh, state, frozen, state_sh, frozen_sh, first)
    done = "loaded the train step from the compilation cache" if events.get("cache_hits") else "compiled the train step"
    runtime.announce(f"{done} in {time.time() - t0:.1f} s")
    writer = MetricWriter(os.path.join(workdir, "tb"))

    # ----------------------------------------------------------------------------------------------- loop
    ckpt.install_sigterm_handler()
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
            state, metrics = compiled(state, frozen, batch, runtime.step_rng(config.seed, step, mesh))
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
            due = {name: e for name, e in evaluators.items() if evals.due(config, name, done)}
            if due:
                evals.run(due, state, frozen, done, workdir, writer)
        else:
            if config.total_steps > start:
                if ckpt.latest_step() != config.total_steps:
                    ckpt.save(config.total_steps, state, data_iter, force=True)
                evals.run(evaluators, state, frozen, config.total_steps, workdir, writer)
    finally:
        bar.close()
        ckpt.close()
        writer.close()
    return history


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name X` or `--name=X` in `argv` (None if absent)."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag, config file or config key as one `error:` line (`humandiff.cli`)."""
    with cli.errors(debug="--debug" in argv):  # --debug is not parsed yet
        spec = _flag_value(argv, "--config")
        if spec and not os.path.isfile(spec.partition(":")[0]):  # ml_collections would fail later, in a traceback
            raise FileNotFoundError(f"config file not found in --config {spec}")
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError, flags.Error) as e:  # ml_collections' override errors, absl's own
            if spec:  # a config that does not load, or an unknown key: name it and the nearest existing one
                config = config_lib.load(spec)
                for arg in argv:
                    if arg.startswith("--config."):
                        config_lib.check_key(config, arg[len("--config."):].partition("=")[0])
            raise ValueError(str(e)) from e


def main(argv) -> None:
    """CLI entry point: parse flags, validate the config, train."""
    del argv
    with cli.errors(_DEBUG.value):
        if _WORKDIR.value is None:
            raise ValueError("--workdir is required")
        if os.path.exists(_WORKDIR.value) and not os.path.isdir(_WORKDIR.value):
            raise NotADirectoryError(f"--workdir {_WORKDIR.value} is a file: training writes a folder there; "
                                     "pass another path")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 brings it back
        config = _CONFIG.value
        runtime.use_memory_scheduler_on_cpu()
        runtime.use_cpu_devices(config_lib.cpu_devices(config))
        runtime.use_compilation_cache(runtime.compilation_cache_dir(config.train.get("compilation_cache_dir", ""),
                                                                    _WORKDIR.value))
        runtime.maybe_initialize_distributed()
        config_lib.validate(config, num_devices=jax.device_count())
        with logging_redirect_tqdm():
            train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=_parse_flags)
