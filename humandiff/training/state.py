"""The sharded train state: initialisation (random, pretrained folders, an earlier stage), restore, and the step
compiled ahead of time against the state's shardings.

A state is `{"params", "ema", "opt_state", "step"}` (`training/step.py`) over the trainable parameters; the frozen
parameters (VAE, CLIP, ...) travel beside it. Shardings come from `jax.eval_shape` and `config.sharding`, so a step
can be compiled before anything is allocated (`abstract_state`).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from humandiff.training import checkpoint, input as train_input, modeling, optim, sharding, step as train_step


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


def _load_init_checkpoint(path: str, reference_net: str) -> dict:
    """Parameters (EMA if kept) of an earlier stage: its workdir's latest checkpoint or an export folder, read by the
    one trained-model reader (`checkpoints.loading.load_trained`), as host arrays. A separate reference UNet that
    the earlier stage lacks starts from its UNet."""
    from humandiff.checkpoints import loading  # noqa: PLC0415

    try:
        params = loading.load_trained(path, ema=True).params
        if reference_net == "separate" and "reference_unet" not in params:
            params = dict(params, reference_unet=modeling.reference_init(params["unet"]))
        return params
    except (ValueError, FileNotFoundError, checkpoint.CheckpointError) as e:  # incl. ExportError, WeightsError
        raise checkpoint.CheckpointError(f"config.model.init_checkpoint={path!r}: {e}") from e


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
        loaded = _load_init_checkpoint(config.model.init_checkpoint, modeling.reference_net(config))
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
    # Traced under the mesh: splash attention runs in shard_map over the axes of `sharding.attention_config`.
    with jax.set_mesh(mesh):
        return jitted.lower(_abstract(state, state_sh), _abstract(frozen, frozen_sh), batch_abstract, rng_abstract)


def write_config(workdir: str, config) -> None:
    """`<workdir>/config.json`: the run's resolved config (`humandiff.export` and `humandiff.sample` read it)."""
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "config.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, "config.json"))  # never a half-written file
