"""Video stage (configs/sd15_video.py, runlocal): train steps on synthetic clips update only the motion modules; every
other parameter stays bitwise unchanged. Slow: compiling the video train step takes ~1 min on a 2-core CPU."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from humandiff.training import step as step_mod

from humandiff import config_lib  # noqa: E402
from humandiff.models.init import numpy_init  # noqa: E402
from humandiff.training import modeling, optim  # noqa: E402
from humandiff.weights import io  # noqa: E402

FRAMES = 3


def _batch(config, rng):
    b = 2
    h, w = (int(x) for x in config.data.resolution)
    img = lambda *s: jnp.asarray(rng.uniform(-1, 1, s), jnp.float32)  # noqa: E731
    pose = lambda *s: jnp.asarray(rng.uniform(0, 1, s), jnp.float32)  # noqa: E731
    return {"ref_image": img(b, h, w, 3), "ref_pose": pose(b, h, w, 3), "tgt_image": img(b, FRAMES, h, w, 3),
            "tgt_pose": pose(b, FRAMES, h, w, 3), "drop_cond": jnp.asarray([False, True])}


@pytest.mark.slow
def test_video_stage_trains_only_motion_modules():
    config = config_lib.load("configs/sd15_video.py:runlocal")
    assert config.task == "video" and tuple(config.optim.trainable) == ("motion_modules",)
    config.optim.warmup_steps, config.optim.ema_decay = 0, 0.0
    config.train.remat = False  # remat compiles ~2x slower on a CPU; tests/models cover remat separately
    models, pretrained = modeling.build(config)
    assert models.unet.motion_modules and not pretrained
    # numpy_init: no init compile. Motion proj_out zeroed as the modules' own init does (a fresh video stage).
    x = modeling.dummy_inputs(models, config)
    unet = io.flatten(numpy_init(models.unet, x["latent"], jnp.zeros((1,)), x["context"]))
    unet = {k: jnp.zeros_like(v) if "/motion_modules_" in k and "/proj_out/" in k else v for k, v in unet.items()}
    params = {"unet": io.unflatten(unet), "pose_encoder": numpy_init(models.pose_encoder, x["pose"], seed=1)}
    mask = optim.trainable_mask(params, tuple(config.optim.trainable), tuple(config.optim.frozen))
    trainable, frozen = optim.split(params, mask)
    assert all("motion_modules" in k for k in io.flatten(trainable))
    assert any("motion_modules" in k for k in io.flatten(trainable))
    tx = optim.make_optimizer(config)
    state = step_mod.init_state(trainable, tx, 0.0)
    train_step = jax.jit(step_mod.make_train_step(models, config, tx, step_mod.make_schedule(config)))
    rng = np.random.default_rng(0)
    for i in range(2):
        state, metrics = train_step(state, frozen, _batch(config, rng), jax.random.key(i + 1))
        assert float(metrics["finite"]) == 1.0
    after = io.flatten(optim.merge(state["params"], frozen))
    before = io.flatten(params)
    assert sorted(after) == sorted(before)
    moved = [k for k in before if not np.array_equal(np.asarray(after[k]), np.asarray(before[k]))]
    assert moved and all("motion_modules" in k for k in moved)  # only temporal layers moved ...
    assert any(k.endswith("proj_out/kernel") for k in moved)  # ... starting with the zero-initialised output
    print(f"video stage: {len(moved)} of {len(before)} leaves changed, all under motion_modules")
