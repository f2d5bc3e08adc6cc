"""One sharded train step with splash attention (Pallas interpret mode) on a (2, 2, 2) mesh of 8 fake CPU devices
equals the same step with XLA attention.

Pallas TPU kernels cannot be partitioned by XLA, so inside the sharded step splash must run in `jax.shard_map` over
the axes `sharding.attention_config` names (batch over data x fsdp, heads over tensor), under the mesh that
`state.lower_step` traces with. In interpret mode the kernel is ordinary XLA code that XLA could partition, so the
numbers alone would not notice an unsharded kernel: the test also checks that every splash call saw the mesh and
that the step holds a manual (shard_map) computation.
"""

import jax
import numpy as np
import pytest

from humandiff import config_lib
from humandiff.ops import splash
from humandiff.training import checkpoint, input as train_input, modeling, runtime, sharding, state as state_lib


def _step(impl: str, workdir: str):
    """`(lowered step text, new state, metrics)` of step 0 with `model.attention_impl=impl`, through the trainer's
    own state building and step lowering."""
    config = config_lib.load("configs/tiny_test.py", {
        "model.attention_impl": impl, "train.form": "two_pass", "batch_size": 4, "optim.warmup_steps": 0,
        "data.resolution": (8, 8),  # 64 tokens per half: one 128-token splash tile after padding
        "model.unet.attention_head_dim": 2,  # 2 heads of 8 channels (fewer interpreted kernel iterations than 8)
    })
    config.mesh.shape = (2, 2, 2)
    config_lib.validate(config, num_devices=jax.device_count())
    mesh = sharding.make_mesh(config)
    models, _ = modeling.build(config)
    data = train_input.train_iterator(config)
    ckpt = checkpoint.Checkpointer(workdir, 10 ** 6, 1, async_save=False)
    state, frozen, state_sh, frozen_sh, _ = state_lib.build_state(config, models, {}, mesh, ckpt, data)
    ckpt.close()
    local = next(data)
    lowered = state_lib.lower_step(config, models, mesh, state, frozen, state_sh, frozen_sh, local)
    new, metrics = lowered.compile()(state, frozen, train_input.to_global(local, mesh),
                                     runtime.step_rng(config.seed, 0, mesh))
    return lowered.as_text(), jax.device_get(new), jax.device_get(metrics)


def test_sharded_step_with_splash_equals_xla(tmp_path, monkeypatch):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py fakes 8 CPU devices)")
    calls = []
    call_kernel = splash._call_kernel

    def spy(kernel_for, q, k, v, ids, config):
        mesh = splash._shard_mesh(config)  # what the kernel is shard-mapped over (None: unsharded)
        calls.append((q.shape, None if mesh is None else dict(zip(mesh.axis_names, mesh.axis_sizes))))
        return call_kernel(kernel_for, q, k, v, ids, config)

    monkeypatch.setattr(splash, "_call_kernel", spy)
    text_xla, want, want_metrics = _step("xla", str(tmp_path / "xla"))
    assert not calls and "manual_computation" not in text_xla
    text, got, metrics = _step("interpret", str(tmp_path / "interpret"))

    # 4 self-attention layers (down, mid, 2 up), each a reference pass and a cached target pass; [B, H, L, D]
    # after padding tokens to the tile and the head dim to 128.
    assert calls == [((4, 2, 128, 128), {"data": 2, "fsdp": 2, "tensor": 2})] * 8, calls
    assert "manual_computation" in text  # the kernels run per shard inside shard_map

    # Measured (float32): loss differs by 6e-8; first moments (0.1 x clipped gradient) by at most 1.4e-6 of each
    # leaf's largest entry; parameters by 0.0041 x lr (AdamW's first step is ~lr x sign(g), so gradients near 0
    # move most). Tolerances are 5 to 15x those; a wrong mask or a lost shard changes gradients by O(1).
    np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-6)
    lr = float(want_metrics["lr"])
    assert lr > 0  # no warmup: the step moves the parameters
    for name, tol in (("params", 0.02 * lr), ("ema", 0.002 * lr)):
        for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want[name])[0], jax.tree.leaves(got[name])):
            np.testing.assert_allclose(g, w, rtol=0, atol=tol, err_msg=f"{name}/{sharding.path_str(path)}")
    for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want["opt_state"])[0],
                            jax.tree.leaves(got["opt_state"])):
        w = np.asarray(w)
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * float(np.max(np.abs(w), initial=0.0)),
                                   err_msg=f"opt_state/{sharding.path_str(path)}")
