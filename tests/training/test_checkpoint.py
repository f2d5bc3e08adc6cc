"""Checkpoint round trip: state bitwise, grain iterator resumes at the same batch, frozen saved once, bad restore."""

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from humandiff.training import checkpoint, input as train_input, optim


def _state():
    params = {"unet": {"k": jnp.arange(12.0).reshape(3, 4)}}
    tx = optim.AdamW(optax.constant_schedule(1e-3))
    return {"step": jnp.asarray(7, jnp.int32), "params": params, "ema": params, "opt_state": tx.init(params)}


def _iterator():
    ds = grain.MapDataset.range(20).map(lambda i: {"x": np.full((2,), i, np.int32)})
    return train_input.make_iterator(ds, 4, seed=1, process_index=0, process_count=1)


def test_roundtrip_state_and_iterator(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2, async_save=True)
    state, it = _state(), _iterator()
    for _ in range(3):
        next(it)
    assert ckpt.save(7, state, it)
    expected = [next(it)["x"] for _ in range(3)]
    ckpt.wait()
    fresh = _iterator()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, step = ckpt.restore(abstract, fresh)
    assert step == 7
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    got = [next(fresh)["x"] for _ in range(3)]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    ckpt.close()


def test_keep_n_and_empty_dir(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2, async_save=False)
    assert ckpt.restore(_state()) is None  # fresh start only when there is no checkpoint at all
    for step in (1, 2, 3):
        ckpt.save(step, _state())
    ckpt.wait()
    assert ckpt.manager.all_steps() == [2, 3]
    ckpt.close()


def test_restore_failure_names_the_directory(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2, async_save=False)
    ckpt.save(1, _state())
    ckpt.wait()
    wrong = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": {"other": jax.ShapeDtypeStruct((5,), jnp.float32)}}
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path)):
        ckpt.restore(wrong)
    ckpt.close()


def test_restore_to_host_reads_numpy_and_names_a_bad_directory(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2, async_save=False)
    ckpt.save(1, _state())
    ckpt.close()
    restored = checkpoint.restore_to_host(str(tmp_path / "checkpoints" / "1" / "state"))
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored))
    np.testing.assert_array_equal(restored["params"]["unet"]["k"], np.arange(12.0).reshape(3, 4))
    assert int(restored["step"]) == 7
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match=f"in {tmp_path / 'empty'}: FileNotFoundError.*_METADATA"):
        checkpoint.restore_to_host(str(tmp_path / "empty"))


def test_frozen_saved_once(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), every=1, keep=2, async_save=False)
    frozen = {"vae": {"k": jnp.ones((4,))}}
    ckpt.save_frozen_once(frozen)
    mtime = os.path.getmtime(ckpt.frozen_directory)
    ckpt.save_frozen_once({"vae": {"k": jnp.zeros((4,))}})  # second call: no rewrite
    assert os.path.getmtime(ckpt.frozen_directory) == mtime
    back = ckpt.restore_frozen(jax.eval_shape(lambda: frozen))
    np.testing.assert_array_equal(back["vae"]["k"], 1.0)
    ckpt.close()
