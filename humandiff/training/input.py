"""Training input: a per-process grain pipeline of examples, batched, turned into global sharded jax arrays.

The per-example work (frame sampling, crop, pose rendering, condition dropout) belongs to `humandiff.data`; this
module only does what the trainer owns: per-process sharding of the record indices, a seeded shuffle, infinite
repetition, per-process batching, a checkpointable iterator, and the host -> global array step.
"""

from __future__ import annotations

from typing import Any, Callable

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from humandiff.training import sharding


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
    """Examples each process loads per step (the global batch split evenly over processes)."""
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch % process_count:
        raise ValueError(f"config.batch_size={global_batch} is not divisible by the {process_count} processes")
    return global_batch // process_count


def make_iterator(dataset: grain.MapDataset, global_batch: int, *, seed: int,
                  transform: Callable[[Any, np.random.Generator], Any] | None = None,
                  worker_threads: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator over this process's share of the global batches.

    Args:
      dataset: random-access examples (or records, then `transform` turns them into examples).
      global_batch: examples per step over all processes.
      seed: shuffle and per-example randomness seed (same on every process).
      transform: optional `(record, np.random.Generator) -> example` (deterministic per index and seed).
      worker_threads: grain read threads (0: read in the calling thread, fully deterministic order).
      process_index, process_count: default to jax's.

    Returns:
      A grain iterator yielding dicts of numpy arrays with leading dim `global_batch / process_count`;
      `get_state`/`set_state` (and Orbax via grain.checkpoint) resume it exactly.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if len(dataset) < process_count:
        raise ValueError(f"dataset has {len(dataset)} records, fewer than the {process_count} processes")
    ds = dataset[process_index::process_count].seed(seed).shuffle().repeat()
    if transform is not None:
        ds = ds.random_map(transform)
    ds = ds.batch(local_batch_size(global_batch, process_count), drop_remainder=True)
    options = grain.ReadOptions(num_threads=worker_threads, prefetch_buffer_size=2 * worker_threads)
    return iter(ds.to_iter_dataset(options))


def to_global(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Process-local batch -> global arrays sharded over the mesh's batch axes (data, fsdp)."""
    target = sharding.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(target, np.asarray(v)) for k, v in local.items()}


def abstract_batch(local: dict[str, np.ndarray], mesh: Mesh, process_count: int | None = None) -> dict:
    """`jax.ShapeDtypeStruct`s of the global batch that `to_global(local)` produces (for AOT compilation)."""
    process_count = jax.process_count() if process_count is None else process_count
    target = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct((v.shape[0] * process_count,) + v.shape[1:], v.dtype, sharding=target)
            for k, v in local.items()}


def data_config(config):
    """The `humandiff.data.loader` config for a training config (stage and global batch from the top level)."""
    from humandiff.data import loader

    dc = loader.default_config()
    for key, value in config.data.items():
        if key == "synthetic":
            dc.synthetic.update(value.to_dict())
        elif key != "num_frames":
            dc[key] = tuple(value) if isinstance(value, list) else value
    dc.num_frames = config.data.num_frames
    dc.stage = config.task
    dc.batch_size = config.batch_size
    return dc


def train_iterator(config, *, process_index: int | None = None, process_count: int | None = None,
                   source: Any = None) -> grain.DatasetIterator:
    """Process-local numpy batches for `config` from `humandiff.data.loader` (checkpointable grain iterator)."""
    from humandiff.data import loader

    return loader.make_train_iterator(data_config(config), mesh=None, seed=config.seed, process_index=process_index,
                                      process_count=process_count, source=source)
