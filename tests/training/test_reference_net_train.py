"""`model.reference_net="separate"` through the real trainer (tiny config, 8 fake CPU devices): the reference UNet
starts as the UNet's copy, both train (each its own way), the checkpoint and config hold it; a trainable regex that
would train only one of the two UNets is refused at start-up."""

import numpy as np
import pytest

from humandiff import config_lib, train
from humandiff.checkpoints import export
from humandiff.training import modeling, optim
from humandiff.weights import io

import jax


def _config():
    config = config_lib.load("configs/tiny_test.py")
    config.model.reference_net = "separate"
    config.total_steps, config.ckpt.every, config.log_every = 2, 2, 1
    return config


def test_trainer_trains_both_unets(tmp_path):
    config = _config()
    train.train_and_evaluate(config, str(tmp_path / "run"), evaluators={})
    trained = export.read_checkpoint(str(tmp_path / "run"), ema=False)
    assert trained.config.model.reference_net == "separate"
    models, _ = modeling.build(config)
    start = io.flatten(jax.jit(lambda: modeling.init_params(models, config, jax.random.key(config.seed)))())
    now = io.flatten(trained.params)
    assert {k.split("/", 1)[1] for k in now if k.startswith("reference_unet/")} == \
        {k.split("/", 1)[1] for k in now if k.startswith("unet/")}
    moved = lambda key: float(np.abs(np.asarray(now[key]) - np.asarray(start[key])).max())  # noqa: E731
    attn = "down_blocks_0/attentions_0/transformer_blocks_0/attn1/to_k/kernel"
    np.testing.assert_array_equal(start["unet/" + attn], start["reference_unet/" + attn])  # one starting point
    assert moved("unet/" + attn) > 0 and moved("reference_unet/" + attn) > 0
    assert float(np.abs(np.asarray(now["unet/" + attn]) - np.asarray(now["reference_unet/" + attn])).max()) > 0


def test_training_only_one_of_the_unets_is_refused():
    config = _config()
    models, _ = modeling.build(config)
    shapes = jax.eval_shape(lambda: modeling.init_params(models, config, jax.random.key(0)))
    with pytest.raises(config_lib.ConfigError, match="only one of unet/ and reference_unet/"):
        optim.trainable_mask(shapes, (r"^(unet|pose_encoder)/",), ())
    sd15 = config_lib.load("configs/sd15_image.py")  # its regex names both UNets
    mask = optim.trainable_mask(shapes, tuple(sd15.optim.trainable), ())
    assert all(jax.tree_util.tree_leaves(mask["reference_unet"]))
