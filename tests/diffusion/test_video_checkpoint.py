"""A video-stage checkpoint folder (`unet/` + `motion_adapter/`, as `humandiff.export` writes it) loads for sampling
with its motion modules; without `motion_adapter/` the same folder is the image model."""

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from humandiff.checkpoints import loading

import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from humandiff.models.init import numpy_init  # noqa: E402
from humandiff.models.pose_encoder import PoseEncoder  # noqa: E402
from humandiff.weights import io  # noqa: E402
from humandiff.weights.pose import pose_encoder_to_torch  # noqa: E402

UNET = dict(in_channels=3, out_channels=3, block_out_channels=(16,), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=8,
            attention_head_dim=2, norm_num_groups=8, sample_size=8)


def test_checkpoint_with_motion_adapter_loads_motion_modules(tmp_path):
    torch.manual_seed(0)
    diffusers.UNet2DConditionModel(**UNET).save_pretrained(tmp_path / "unet")
    adapter = diffusers.MotionAdapter(block_out_channels=(16,), motion_layers_per_block=1, motion_norm_num_groups=8,
                                      motion_num_attention_heads=2, motion_max_seq_length=16)
    adapter.save_pretrained(tmp_path / "motion_adapter")
    pose = numpy_init(PoseEncoder(16, (8,)), jnp.zeros((1, 8, 8, 3)))
    save_file(pose_encoder_to_torch(pose), str(tmp_path / "pose_encoder.safetensors"))
    loaded = loading.load_checkpoint(str(tmp_path))
    assert loaded.models.unet.motion_modules and loaded.models.unet.motion_max_seq_length == 16
    flat = io.flatten(loaded.params["unet"])
    key = "down_blocks_0/motion_modules_0/proj_in/kernel"
    np.testing.assert_array_equal(np.asarray(flat[key]),
                                  adapter.state_dict()["down_blocks.0.motion_modules.0.proj_in.weight"].numpy().T)
    shutil.rmtree(tmp_path / "motion_adapter")
    image = loading.load_checkpoint(str(tmp_path))
    assert not image.models.unet.motion_modules and not any("motion_modules" in k for k in io.flatten(image.params))
