"""configs/demo_video.py: the stage-2 demo takes its architecture from the stage-1 run's config.json, fails clearly
without it, and (slow) trains motion modules only, end to end, from a stage-1 workdir."""

import json
import os

import numpy as np
import pytest

from humandiff import config_lib, train
from humandiff.training import state as state_lib
from humandiff.weights import io

TINY_UNET = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=[16], layers_per_block=1,
                 down_block_types=["CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D"],
                 cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8)


def _stage1_config(**overrides):
    """A demo image config with a UNet that differs from configs/demo.py's (so copying it is observable)."""
    config = config_lib.load("configs/demo.py:runlocal")
    config.model.unet = config_lib.ml_collections.ConfigDict(TINY_UNET)
    config.model.pose_encoder.block_out_channels = (16,)
    config.data.resolution = (16, 16)
    config.data.synthetic.update(dict(height=16, width=16, num_videos=8))
    config.diffusion.prediction_type = "epsilon"
    config.model.use_ref_pose = False
    for key, value in overrides.items():
        config_lib.set_dotted(config, key, value)
    return config


def test_architecture_comes_from_stage1_config_json(tmp_path):
    state_lib.write_config(str(tmp_path), _stage1_config())
    c = config_lib.load(f"configs/demo_video.py:stage1={tmp_path}")
    config_lib.validate(c, num_devices=1)
    assert c.task == "video" and c.model.init_checkpoint == str(tmp_path)
    assert tuple(c.model.unet.block_out_channels) == (16,) and c.model.unet.sample_size == 16
    assert tuple(c.model.unet.down_block_types) == ("CrossAttnDownBlock2D",)
    assert tuple(c.model.pose_encoder.block_out_channels) == (16,)
    assert c.diffusion.prediction_type == "epsilon" and c.model.use_ref_pose is False
    assert tuple(c.data.resolution) == (16, 16) and c.data.synthetic.height == 16
    assert c.model.unet_extra.motion_modules is True
    assert tuple(c.optim.trainable) == ("motion_modules",) and c.data.num_frames >= 2


def test_merged_groups_keep_new_fields_and_drop_old_ones(tmp_path):
    """A stage-1 run older than configs/demo.py: a data.synthetic field it lacks keeps its default."""
    state_lib.write_config(str(tmp_path), _stage1_config())
    path = tmp_path / "config.json"
    stage1 = json.loads(path.read_text())
    del stage1["data"]["synthetic"]["num_frames"]
    stage1["data"]["synthetic"]["obsolete_field"] = 1
    stage1["diffusion"]["beta_end"] = 0.02
    path.write_text(json.dumps(stage1))
    c = config_lib.load(f"configs/demo_video.py:stage1={tmp_path}")
    demo = config_lib.load("configs/demo.py")
    assert c.data.synthetic.num_frames == demo.data.synthetic.num_frames and c.data.synthetic.height == 16
    assert "obsolete_field" not in c.data.synthetic and c.diffusion.beta_end == 0.02


def test_without_stage1_uses_demo_architecture():
    c = config_lib.load("configs/demo_video.py")
    demo = config_lib.load("configs/demo.py")
    assert c.model.unet.to_dict() == demo.model.unet.to_dict() and c.model.init_checkpoint == ""


def test_missing_or_bad_config_json_names_the_file(tmp_path):
    with pytest.raises(config_lib.ConfigError, match=f"{tmp_path}/config.json"):
        config_lib.load(f"configs/demo_video.py:stage1={tmp_path}")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(config_lib.ConfigError, match="config.json"):
        config_lib.load(f"configs/demo_video.py:stage1={tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"task": "video"}))
    with pytest.raises(config_lib.ConfigError, match="task='video'"):
        config_lib.load(f"configs/demo_video.py:stage1={tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"task": "image", "model": {}}))
    with pytest.raises(config_lib.ConfigError, match="'model.unet' is missing"):
        config_lib.load(f"configs/demo_video.py:stage1={tmp_path}")


@pytest.mark.slow
def test_stage2_trains_motion_modules_from_stage1_workdir(tmp_path):
    """Stage 1 (2 steps) -> stage 2 (runlocal): loads stage 1's EMA, trains only motion modules, saves them."""
    stage1 = tmp_path / "stage1"
    config1 = _stage1_config(total_steps=2, batch_size=8, **{"ckpt.every": 2})
    train.train_and_evaluate(config1, str(stage1), evaluators={})
    config2 = config_lib.load(f"configs/demo_video.py:runlocal,stage1={stage1}")
    config2.batch_size = 8  # one clip per fake device
    history = train.train_and_evaluate(config2, str(tmp_path / "stage2"), evaluators={})
    assert history and all(np.isfinite(h["loss"]) and h["skipped"] == 0 for h in history)
    from humandiff.checkpoints import export
    before = io.flatten(export.read_checkpoint(str(stage1), ema=True).params)
    after = io.flatten(export.read_checkpoint(str(tmp_path / "stage2"), ema=True).params)
    motion = [k for k in after if "/motion_modules_" in k]
    assert motion and sorted(set(after) - set(motion)) == sorted(before)
    assert all(np.array_equal(after[k], before[k]) for k in before)  # the image model is unchanged
    assert any(not np.all(after[k] == 0) for k in motion if "/proj_out/" in k)  # zero-init output moved
    assert os.path.isfile(tmp_path / "stage2" / "config.json")
