"""Logical axis names on every parameter dimension and the shardings `config.sharding.logical_rules` give them
(8 fake CPU devices, `jax.eval_shape` trees only, except one jitted train step on sharded parameters)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from humandiff import config_lib
from humandiff.models.clip_vision import CLIPVisionConfig, CLIPVisionModelWithProjection
from humandiff.models.pose_encoder import PoseEncoder
from humandiff.models.unet import UNet2DConditionModel
from humandiff.models.vae import AutoencoderKL
from humandiff.training import logical_axes, modeling, optim, sharding, step as train_step

ATTN = "unet/down_blocks_0/attentions_0/transformer_blocks_0/attn1"


def _tiny(mesh_shape, min_size=0, **overrides):
    config = config_lib.load("configs/tiny_test.py", overrides)
    config.mesh.shape = mesh_shape
    config.sharding.min_size = min_size
    return config


def _abstract_params(config):
    models, _ = modeling.build(config)
    return models, jax.eval_shape(lambda k: modeling.init_params(models, config, k), jax.random.key(0))


def _every_model_tree():
    """Small instances of every model family, with each optional layout switched on."""
    unet_kw = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                   attention_head_dim=8, norm_num_groups=8)
    x, t, ctx = jnp.zeros((2, 16, 16, 4)), jnp.zeros((2,), jnp.int32), jnp.zeros((2, 1, 24))
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, layers_per_block=1)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, projection_dim=16,
                                                          num_hidden_layers=1, num_attention_heads=4,
                                                          image_size=32, patch_size=8))
    pose = PoseEncoder(out_channels=32, block_out_channels=(8, 16))

    def init(k):
        return {
            "unet_motion": UNet2DConditionModel(**unet_kw, motion_modules=True).init(k, x, t, ctx)["params"],
            "unet_linear": UNet2DConditionModel(**unet_kw, use_linear_projection=True).init(k, x, t, ctx)["params"],
            "vae": vae.init(k, jnp.zeros((1, 16, 16, 3)), k, method=vae.init_all)["params"],
            "image_encoder": clip.init(k, jnp.zeros((1, 32, 32, 3)))["params"],
            "pose_encoder": pose.init(k, jnp.zeros((1, 16, 16, 3)))["params"],
        }

    return jax.eval_shape(init, jax.random.key(0))


def test_every_parameter_of_every_model_is_named():
    axes = logical_axes.tree_axes(sharding.flat_shapes(_every_model_tree()))
    assert logical_axes.unnamed_vectors(axes) == []
    used = {name for names in axes.values() for name in names}
    assert used == set(config_lib.LOGICAL_AXES)  # the vocabulary is exactly what the models need
    expect = {
        "unet_motion/conv_in/kernel": ("conv_h", "conv_w", "conv_in", "conv_out"),
        "unet_motion/down_blocks_0/motion_modules_0/transformer_blocks_0/attn1/to_q/kernel": ("embed", "heads"),
        "unet_linear/down_blocks_0/attentions_0/proj_in/kernel": ("embed", "embed"),
        "unet_linear/down_blocks_0/attentions_0/proj_in/bias": ("embed",),
        "unet_motion/down_blocks_0/attentions_0/proj_in/bias": ("conv_out",),  # a 1x1 conv here
        "unet_motion/time_embedding/linear_1/kernel": ("embed", "temb"),
        "vae/decoder/mid_block/attentions_0/to_out_0/kernel": ("heads", "embed"),
        "vae/decoder/mid_block/attentions_0/group_norm/bias": ("norm",),
        "image_encoder/vision_model/embeddings/position_embedding/embedding": ("pos", "embed"),
        "image_encoder/vision_model/embeddings/class_embedding": ("embed",),
        "image_encoder/vision_model/encoder/layers_0/mlp/fc2/kernel": ("mlp", "embed"),
        "image_encoder/vision_model/pre_layrnorm/bias": ("norm",),
        "pose_encoder/conv_out/bias": ("conv_out",),
    }
    for path, names in expect.items():
        assert axes[path] == names, path


def test_unknown_layouts():
    with pytest.raises(logical_axes.LogicalAxesError, match="'unet/extra/gate/kernel' with shape \\(8, 8\\)"):
        logical_axes.leaf_axes("unet/extra/gate/kernel", (8, 8))
    with pytest.raises(logical_axes.LogicalAxesError, match="unet/lut"):
        logical_axes.leaf_axes("unet/lut", (4, 4, 4))
    assert logical_axes.leaf_axes("unet/extra/gain", (8,)) == (None,)  # 1-D vectors: unnamed, replicated
    assert logical_axes.leaf_axes("unet/extra/step", ()) == ()
    config = _tiny((1, 8, 1))
    tree = {"unet": {"extra": {"gain": jax.ShapeDtypeStruct((64,), jnp.float32)}}}
    shard = sharding.config_shardings(config, tree, sharding.make_mesh(config))
    assert shard["unet"]["extra"]["gain"].spec == P(None)
    assert "1 unnamed 1-D parameters, replicated: ['unet/extra/gain']" in sharding.summary(config, tree, shard)[-1]


def test_tiny_params_get_the_specs_the_rules_say():
    """(1, 4, 2) mesh, the demo's default rules: heads/mlp -> tensor, conv_out/conv_in/embed/temb -> fsdp."""
    config = _tiny((1, 4, 2))
    assert config.sharding.mode == "logical"
    _, abstract = _abstract_params(config)
    shard = sharding.config_shardings(config, abstract, sharding.make_mesh(config))
    table = sharding.describe(shard, abstract, logical=True)
    spec = {sharding.path_str(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(shard)[0]}
    assert spec["unet/conv_in/kernel"] == P(None, None, None, "fsdp")
    assert spec["unet/conv_out/kernel"] == P(None, None, "fsdp", None)  # 3 channels out: conv_in fallback
    assert spec["unet/conv_out/bias"] == P(None)  # 3 not divisible by 4: replicated
    assert spec[f"{ATTN}/to_q/kernel"] == P("fsdp", "tensor")
    assert spec[f"{ATTN}/to_out_0/kernel"] == P("tensor", "fsdp")
    assert spec[f"{ATTN}/to_out_0/bias"] == P("fsdp")
    assert spec["unet/down_blocks_0/resnets_0/norm1/scale"] == P(None)
    assert spec["unet/time_embedding/linear_2/kernel"] == P("fsdp", None)  # one axis at most once
    assert table[f"{ATTN}/to_q/kernel"] == "(16, 16) ('embed', 'heads') -> ('fsdp', 'tensor')"
    lines = sharding.summary(config, abstract, shard)  # what the trainer logs at start-up
    assert lines[0].startswith("sharding (logical): ") and " parameters sharded (" in lines[0], lines[0]
    assert any(line.endswith("('embed', 'heads') -> ('fsdp', 'tensor')") for line in lines), lines
    # min_size still applies; every sharded dimension divides evenly.
    small = _tiny((1, 4, 2), min_size=300)
    small_shard = sharding.config_shardings(small, abstract, sharding.make_mesh(small))
    assert small_shard["unet"]["conv_in"]["kernel"].spec == P(None, None, None, "fsdp")  # 432 elements
    assert small_shard["unet"]["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"][
        "kernel"].spec == P(None, None)  # 256 elements
    sizes = {"fsdp": 4, "tensor": 2}
    for path, s in spec.items():
        shape = sharding.flat_shapes(abstract)[path]
        assert all(a is None or d % sizes[a] == 0 for d, a in zip(shape, s)), path


def test_rules_fallback_and_non_divisible():
    rules = (("heads", "tensor"), ("conv_out", "fsdp"), ("conv_in", "fsdp"), ("embed", "fsdp"), ("embed", "tensor"))
    sizes = {"data": 1, "fsdp": 4, "tensor": 2}
    conv = logical_axes.CONV_KERNEL
    assert sharding.logical_spec(conv, (3, 3, 6, 10), rules, sizes) == P(None, None, None, None)
    assert sharding.logical_spec(conv, (3, 3, 8, 10), rules, sizes) == P(None, None, "fsdp", None)
    assert sharding.logical_spec(("embed", "embed"), (8, 8), rules, sizes) == P("fsdp", "tensor")
    assert sharding.logical_spec(("embed", "heads"), (8, 6), rules, sizes) == P("fsdp", "tensor")
    assert sharding.logical_spec(("embed", "heads"), (8, 5), rules, sizes) == P("fsdp", None)
    assert sharding.logical_spec(("norm",), (64,), rules, sizes) == P(None)


def test_optimizer_and_ema_state_follow_params():
    config = _tiny((2, 2, 2))
    _, abstract = _abstract_params(config)
    tx = optim.make_optimizer(config)
    state = jax.eval_shape(lambda p: train_step.init_state(p, tx, 0.9), abstract)
    shard = sharding.config_shardings(config, state, sharding.make_mesh(config))
    flat = {sharding.path_str(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(shard)[0]}
    for suffix in (f"{ATTN}/to_q/kernel", "unet/conv_in/kernel", f"{ATTN}/to_out_0/kernel"):
        param = flat[f"params/{suffix}"]
        assert any(a is not None for a in param), suffix
        mirrors = [s for p, s in flat.items() if p.endswith(suffix) and not p.startswith("params/")]
        assert len(mirrors) == 3 and all(s == param for s in mirrors), (suffix, mirrors)  # ema, mu, nu
    assert flat["step"] == P()


def test_jitted_update_keeps_logical_shardings():
    """An optimizer + EMA update jitted over the real tiny parameter tree with logical in/out shardings."""
    config = _tiny((2, 2, 2))
    _, abstract = _abstract_params(config)
    tx = optim.make_optimizer(config)
    mesh = sharding.make_mesh(config)
    state_abstract = jax.eval_shape(lambda p: train_step.init_state(p, tx, 0.9), abstract)
    state_sh = sharding.config_shardings(config, state_abstract, mesh)
    state = jax.jit(lambda: train_step.init_state(jax.tree.map(jnp.ones_like, abstract), tx, 0.9),
                    out_shardings=state_sh)()

    def update(state):
        grads = jax.tree.map(lambda p: 0.1 * p, state["params"])
        params, opt_state = tx.update(grads, state["opt_state"], state["params"], *optim.norm_and_finite(grads))
        return dict(state, step=state["step"] + 1, params=params, opt_state=opt_state,
                    ema=optim.ema_update(state["ema"], params, 0.9))

    new = jax.jit(update, in_shardings=(state_sh,), out_shardings=state_sh, donate_argnums=0)(state)
    kernel = new["params"]["unet"]["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert {s.data.shape for s in kernel.addressable_shards} == {(8, 8)}  # (16, 16) over fsdp=2, tensor=2
    # Checked on the host: hundreds of eager sharded reductions (one collective each) can miss XLA's CPU
    # rendezvous deadline on a loaded 2-core machine and abort the process.
    assert int(new["step"]) == 1 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new["params"]))
    mu = [x for p, x in jax.tree_util.tree_flatten_with_path(new["opt_state"])[0]
          if sharding.path_str(p).endswith(f"mu/{ATTN}/to_q/kernel")]
    assert len(mu) == 1 and mu[0].sharding.spec == P("fsdp", "tensor")
    assert float(np.min(np.asarray(mu[0]))) > 0.0  # the (clipped) gradient reached the sharded first moment


@pytest.mark.slow
def test_jitted_step_on_logically_sharded_params(tmp_path, caplog):
    """One train step on a (2, 2, 2) mesh with every parameter the rules allow sharded; loss finite."""
    from humandiff import train

    caplog.set_level(logging.INFO)
    config = _tiny((2, 2, 2), **{"total_steps": 1, "log_every": 1, "ckpt.every": 1})
    history = train.train_and_evaluate(config, str(tmp_path), evaluators={})
    assert [h["step"] for h in history] == [1] and all(np.isfinite(h["loss"]) for h in history)
    log = caplog.text
    assert "sharding (logical): " in log and "('embed', 'heads') -> ('fsdp', 'tensor')" in log, log[-3000:]
