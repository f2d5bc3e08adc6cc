"""End-to-end training on the tiny config (8 fake CPU devices): loss falls, files appear, exact resume, SIGTERM
checkpoint, NaN handling. One config and one set of shapes, so after the first compile every run hits the
persistent compilation cache."""

import glob
import json
import os
import signal

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import humandiff.models.unet  # noqa: F401  (fails loudly if broken)
import humandiff.models.pose_encoder  # noqa: F401  (fails loudly if broken)
import humandiff.diffusion.losses  # noqa: F401  (fails loudly if broken)
import humandiff.data.loader  # noqa: F401  (fails loudly if broken)
import humandiff.data.synthetic  # noqa: F401  (fails loudly if broken)

from humandiff import config_lib, train  # noqa: E402
from humandiff.training import input as train_input  # noqa: E402


def _config(**overrides):
    config = config_lib.load("configs/tiny_test.py")
    for key, value in overrides.items():
        config_lib.set_dotted(config, key, value)
    return config


def _run(workdir, config=None, **kwargs):
    return train.train_and_evaluate(config or _config(), str(workdir), evaluators={}, **kwargs)


def _saved_state(workdir, step):
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.join(str(workdir), "checkpoints", str(step), "state"))


def _iter_state(workdir, step):
    path = glob.glob(os.path.join(str(workdir), "checkpoints", str(step), "data_iter", "*.json"))[0]
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """8 steps in one go (checkpoints at 4 and 8)."""
    workdir = tmp_path_factory.mktemp("straight")
    return workdir, _run(workdir)


def test_loss_falls_and_files_appear(straight):
    workdir, history = straight
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    assert history[-1]["loss"] < history[0]["loss"], history
    assert all(h["finite"] == 1.0 for h in history)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "8"]
    assert glob.glob(str(workdir / "tb" / "events.out.tfevents.*"))
    assert not (workdir / "frozen").exists()  # everything trains in the tiny config: nothing frozen to save


@pytest.mark.slow
def test_exact_resume_after_hard_stop(straight, tmp_path):
    ref_dir, _ = straight
    _run(tmp_path, stop_after=4)  # dies after step 4 with no final save: only the periodic checkpoint 4 exists
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    history = _run(tmp_path)  # resumes at 4, runs 4 more
    assert history[0]["step"] == 6
    a, b = _saved_state(ref_dir, 8), _saved_state(tmp_path, 8)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise
    assert _iter_state(ref_dir, 8) == _iter_state(tmp_path, 8)  # same batches consumed in the same order
    assert _iter_state(ref_dir, 4) == _iter_state(tmp_path, 4)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_stops(tmp_path):
    def hook(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    history = _run(tmp_path, hook=hook)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]  # saved at 3 although ckpt.every is 4
    assert int(_saved_state(tmp_path, 3)["step"]) == 3
    assert signal.getsignal(signal.SIGTERM) == before  # the trainer's handler is gone again
    assert [h["step"] for h in history] == [2]  # stopped: no step after 3 was run


def _nan_dataset(config):
    """The tiny config's own examples with NaN target images."""
    it = train_input.train_iterator(config, process_index=0, process_count=1)
    batch = next(it)
    examples = []
    for i in range(batch["tgt_image"].shape[0]):
        ex = {k: v[i] for k, v in batch.items()}
        ex["tgt_image"] = np.full_like(ex["tgt_image"], np.nan)
        examples.append(ex)
    return grain.MapDataset.source(examples)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nan_never_reaches_a_checkpoint(tmp_path, policy):
    config = _config(**{"train.nan_policy": policy, "total_steps": 4})
    dataset = _nan_dataset(config)
    if policy == "stop":
        with pytest.raises(FloatingPointError, match="nan_policy='stop'"):
            _run(tmp_path, config, dataset=dataset)
        assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")
        return
    history = _run(tmp_path, config, dataset=dataset)
    assert all(h["finite"] == 0.0 for h in history) and history[-1]["skipped"] == 2.0
    saved = _saved_state(tmp_path, 4)
    assert int(saved["step"]) == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved))
