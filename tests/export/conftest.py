"""Shared fixtures: a tiny random SCD model saved in the trainer's checkpoint format, and its fp32 export.

The checkpoint is what `python -m humandiff.train` leaves (`<workdir>/checkpoints/<step>/state` with params, EMA,
optimizer state and step, written by `humandiff.training.checkpoint.Checkpointer`) for a two-level pixel-space
UNet (the tiny test config, widened to two levels so down/up-sampling and both block kinds are exercised, with the
demo's coordinate channels in the pose encoder). Every parameter is random and non-zero (zero-initialised convs
included), and the EMA differs from the raw weights, so that parity tests see every weight and `--ema` is observable.
"""

import json
import importlib
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

# What these tests need from the models, training and diffusion parts (imported by require_parts).
NEEDED = ("humandiff.models.unet", "humandiff.weights.diffusers", "humandiff.training.checkpoint",
          "humandiff.training.modeling", "humandiff.training.step", "humandiff.config_lib")


def require_parts():
    """Imports the parts the export builds on; a broken one fails the calling module (never a silent skip)."""
    for name in NEEDED:
        importlib.import_module(name)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG_SPEC = os.path.join(ROOT, "configs", "tiny_test.py")
UNET_OVERRIDES = {
    "model.unet.block_out_channels": (16, 32),
    "model.unet.down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "model.unet.up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "model.pose_encoder.coord_channels": True,  # the demo's pose encoder: export and parity cover the 5-channel input
}
STEP = 8


def tiny_config():
    """The tiny test config with a two-level UNet."""
    from humandiff import config_lib  # noqa: PLC0415

    config = config_lib.load(CONFIG_SPEC)
    for key, value in UNET_OVERRIDES.items():
        config_lib.set_dotted(config, key, value)
    return config


def _randomise(tree, seed, scale=None, base=None):
    """Random params with `tree`'s shapes (numpy: no XLA compile): lecun-normal kernels, scales near 1, small
    non-zero biases (zero-initialised convs included); with `base`, `base + scale * N(0, 1)` instead."""
    rng = np.random.default_rng(seed)

    def one(path, leaf, b=None):
        if b is not None:
            return jnp.asarray(np.asarray(b) + scale * rng.standard_normal(leaf.shape).astype(np.float32))
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            value = (name == "scale") + 0.1 * rng.standard_normal(leaf.shape)
        return jnp.asarray(value.astype(np.float32))

    if base is None:
        return jax.tree_util.tree_map_with_path(one, tree)
    return jax.tree_util.tree_map_with_path(one, tree, base)


def write_checkpoint(workdir, config, *, step=STEP, with_config_json=True):
    """Saves random params (and a different EMA) exactly as the trainer does: the trainable tree in
    `checkpoints/<step>/state`, frozen parameters that are not loaded from a pretrained folder in `frozen/`.

    Returns:
      `(models, params, ema)`: the full parameter tree the export should produce, raw and with the EMA.
    """
    from humandiff.training import checkpoint, modeling, optim, step as train_step  # noqa: PLC0415

    models, pretrained = modeling.build(config)
    shapes = jax.eval_shape(lambda k: modeling.init_params(models, config, k), jax.random.key(0))
    params = dict(_randomise(shapes, 0))
    params.update({k: jax.tree.map(jnp.asarray, v) for k, v in pretrained.items()})
    mask = optim.trainable_mask(params, tuple(config.optim.trainable), tuple(config.optim.frozen))
    trainable, frozen = optim.split(params, mask)
    ema = _randomise(trainable, 1, 0.01, base=trainable)
    tx = optim.make_optimizer(config)
    state = train_step.init_state(trainable, tx, config.optim.ema_decay)
    state = dict(state, ema=ema, step=jnp.asarray(step, jnp.int32))
    ckpt = checkpoint.Checkpointer(str(workdir), every=1, keep=1, async_save=False)
    ckpt.save(step, state, force=True)
    ckpt.save_frozen_once({k: v for k, v in frozen.items() if k not in pretrained})
    ckpt.close()
    if with_config_json:
        with open(os.path.join(str(workdir), "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort())
    return models, params, optim.merge(ema, frozen)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """(workdir, config, models, params, ema) of a tiny random checkpoint at step 8."""
    workdir = tmp_path_factory.mktemp("train_workdir")
    config = tiny_config()
    models, params, ema = write_checkpoint(workdir, config)
    return str(workdir), config, models, params, ema


@pytest.fixture(scope="session")
def exported(tiny_ckpt, tmp_path_factory):
    """fp32 export (raw weights) of the tiny checkpoint: the folder path."""
    from humandiff.checkpoints import export  # noqa: PLC0415

    out = str(tmp_path_factory.mktemp("exports") / "fp32")
    trained = export.read_checkpoint(tiny_ckpt[0])
    export.write_export(trained, out, dtype="fp32")
    return out


def rel_err(a, b):
    """max|a - b| / max|b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def psnr(a, b):
    """PSNR in dB of images in [-1, 1] (mapped to [0, 1])."""
    mse = float(np.mean(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) / 2.0) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
