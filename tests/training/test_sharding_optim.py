"""Mesh and parameter shardings on 8 fake CPU devices; freezing by regex; EMA; the NaN guard helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from humandiff import config_lib
from humandiff.config_lib import ConfigError
from humandiff.training import optim, sharding

RULES = ((r"(kernel|embedding)$", "fsdp"), (r"proj_out/kernel$", "tensor"), (r".*", "replicate"))


def _tree():
    return {
        "unet": {
            "conv_in": {"kernel": jnp.zeros((3, 3, 4, 64)), "bias": jnp.zeros((64,))},
            "proj": {"kernel": jnp.zeros((64, 96))},
            "odd": {"kernel": jnp.zeros((3, 5, 7))},
            "motion_modules_0": {"kernel": jnp.zeros((64, 64))},
        },
        "vae": {"decoder": {"kernel": jnp.zeros((8, 16))}},
    }


def test_mesh_from_config():
    config = config_lib.load("configs/tiny_test.py")
    config.mesh.shape = (2, -1, 2)
    mesh = sharding.make_mesh(config)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_param_shardings_follow_rules():
    config = config_lib.load("configs/tiny_test.py")
    config.mesh.shape = (1, 4, 2)
    mesh = sharding.make_mesh(config)
    abstract = jax.eval_shape(_tree)
    rules = ((r"proj/kernel$", "tensor"),) + RULES
    shard = sharding.tree_shardings(abstract, mesh, rules, min_size=100)
    assert shard["unet"]["conv_in"]["kernel"].spec == P(None, None, None, "fsdp")  # largest divisible dim
    assert shard["unet"]["conv_in"]["bias"].spec == P(None)  # below min_size
    assert shard["unet"]["proj"]["kernel"].spec == P("fsdp", "tensor")  # tensor on last, fsdp on the other
    assert shard["unet"]["odd"]["kernel"].spec == P(None, None, None)  # nothing divisible by 4: replicated
    assert shard["vae"]["decoder"]["kernel"].spec == P(None, "fsdp")
    # Placing real arrays with these shardings splits them as described.
    x = jax.device_put(jnp.ones((3, 3, 4, 64)), shard["unet"]["conv_in"]["kernel"])
    assert x.addressable_shards[0].data.shape == (3, 3, 4, 16)


def test_optimizer_state_mirrors_param_sharding():
    config = config_lib.load("configs/tiny_test.py")
    config.mesh.shape = (2, 4, 1)
    mesh = sharding.make_mesh(config)
    tx = optax.adamw(1e-3)
    abstract = jax.eval_shape(lambda: tx.init(_tree()))
    shard = sharding.tree_shardings(abstract, mesh, RULES, min_size=100)
    mu = shard[0].mu
    assert mu["unet"]["conv_in"]["kernel"].spec == P(None, None, None, "fsdp")
    assert shard[0].count.spec == P()


def test_batch_sharding_splits_leading_dim():
    config = config_lib.load("configs/tiny_test.py")
    config.mesh.shape = (2, 4, 1)
    mesh = sharding.make_mesh(config)
    x = jax.device_put(np.zeros((8, 4, 4, 3)), sharding.batch_sharding(mesh))
    assert {s.data.shape for s in x.addressable_shards} == {(1, 4, 4, 3)}


def test_trainable_mask_split_merge():
    tree = _tree()
    mask = optim.trainable_mask(tree, trainable=(r"motion_modules",), frozen=(r"^vae/",))
    train, frozen = optim.split(tree, mask)
    assert optim.param_paths(train) == ["unet/motion_modules_0/kernel"]
    assert "vae/decoder/kernel" in optim.param_paths(frozen)
    merged = optim.merge(train, frozen)
    assert optim.param_paths(merged) == optim.param_paths(tree)


@pytest.mark.parametrize("trainable,frozen,key", [
    ((r"motion_modulez",), (), "optim.trainable"),
    ((".*",), (r"^image_encoder/",), "optim.frozen"),
])
def test_regex_matching_nothing_is_an_error(trainable, frozen, key):
    with pytest.raises(ConfigError, match=key):
        optim.trainable_mask(_tree(), trainable, frozen)


def test_nothing_trainable_is_an_error():
    with pytest.raises(ConfigError, match="nothing to train"):
        optim.trainable_mask(_tree(), (".*",), (".*",))


def test_frozen_params_do_not_move_under_the_optimizer():
    config = config_lib.load("configs/tiny_test.py")
    tree = jax.tree.map(lambda x: x + 1.0, _tree())
    train, frozen = optim.split(tree, optim.trainable_mask(tree, ("^unet/",), ()))
    tx = optim.make_optimizer(config)
    state = tx.init(train)
    grads = jax.tree.map(jnp.ones_like, train)
    for _ in range(3):
        updates, state = tx.update(grads, state, train)
        train = optax.apply_updates(train, updates)
    assert not np.allclose(train["unet"]["proj"]["kernel"], 1.0)
    after = optim.merge(train, frozen)
    np.testing.assert_array_equal(after["vae"]["decoder"]["kernel"], 1.0)


def test_warmup_schedule_and_ema():
    config = config_lib.load("configs/tiny_test.py")
    lr = optim.learning_rate(config)
    assert float(lr(0)) == 0.0 and float(lr(config.optim.warmup_steps)) == pytest.approx(config.optim.lr)
    cosine = optim.learning_rate(config_lib.load("configs/tiny_test.py", {"optim.schedule": "cosine"}))
    w, total = config.optim.warmup_steps, config.total_steps
    assert float(cosine(w)) == pytest.approx(config.optim.lr) and float(cosine(total)) == pytest.approx(0.0, abs=1e-12)
    assert float(cosine(w + (total - w) // 2)) == pytest.approx(config.optim.lr / 2, rel=0.1)
    ema = optim.ema_update({"a": jnp.zeros(2)}, {"a": jnp.ones(2)}, 0.9)
    np.testing.assert_allclose(ema["a"], 0.1, rtol=1e-6)
    assert bool(optim.all_finite({"a": jnp.ones(2)})) and not bool(optim.all_finite({"a": jnp.array([1.0, jnp.nan])}))


def test_real_unet_params_sharded_by_rules():
    """The tiny config's real parameter tree (eval_shape only) on an (1, 8, 1) FSDP mesh."""
    import humandiff.models.unet  # noqa: F401  (fails loudly if broken)
    from humandiff.training import modeling

    config = config_lib.load("configs/tiny_test.py")
    config.mesh.shape = (1, -1, 1)
    config.sharding.min_size = 200
    mesh = sharding.make_mesh(config)
    models, _ = modeling.build(config)
    abstract = jax.eval_shape(lambda k: modeling.init_params(models, config, k), jax.random.key(0))
    shard = sharding.tree_shardings(abstract, mesh, config.sharding.rules, config.sharding.min_size)
    table = sharding.describe(shard, abstract)
    sharded = {p: d for p, d in table.items() if "fsdp" in d}
    assert table["unet/conv_in/kernel"] == "(3, 3, 3, 16) -> (None, None, None, 'fsdp')"  # largest divisible dim
    assert any(p.endswith("attn1/to_q/kernel") for p in sharded), table
    for path, desc in table.items():
        shape = eval(desc.split(" -> ")[0])  # noqa: S307 - our own repr of a tuple of ints
        n = int(np.prod(shape))
        if n >= 200 and path.endswith("kernel") and any(d % 8 == 0 for d in shape):
            assert "fsdp" in desc, (path, desc)  # every large kernel with a divisible dim is sharded
        if n < 200 or not path.endswith(("kernel", "embedding")):
            assert "fsdp" not in desc, (path, desc)  # biases / norms replicated
