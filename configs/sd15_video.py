"""Stage 2 (video): AnimateDiff-style motion modules on top of the stage-1 SCD UNet; only temporal layers train.

    python -m humandiff.train --config configs/sd15_video.py:sd15=/models/sd15,image_encoder=/models/clip_img,\
stage1=/work/scd_stage1,motion=/models/mm_sd_v15_v2.safetensors,data_dir=/data/built \
        --workdir /work/scd_stage2

Args: those of sd15_image (incl. data_dir), plus stage1 (stage-1 workdir) and motion (AnimateDiff motion modules:
a MotionAdapter folder or a .safetensors file).
"""

from humandiff import config_lib


def get_config(arg=None):
    """Returns the stage-2 config (sd15_image with the overrides below)."""
    arg = config_lib.parse_arg(arg, sd15="", image_encoder="", data_dir="", stage1="", motion="", runlocal=False,
                               interaction="causal", use_ref_pose=True)
    image = config_lib.load_sibling(__file__, "sd15_image")
    c = image.get_config(f"sd15={arg.sd15},image_encoder={arg.image_encoder},data_dir={arg.data_dir},"
                         f"interaction={arg.interaction},"
                         f"use_ref_pose={arg.use_ref_pose},form=two_pass")
    c.task = "video"  # clips of num_frames target frames sharing one reference cache
    c.total_steps = 10_000  # optimizer steps
    c.batch_size = 8  # global clips per step
    c.model.init_checkpoint = arg.stage1  # stage-1 workdir: UNet + pose encoder start from its parameters
    c.model.motion_modules_path = arg.motion  # AnimateDiff motion modules: MotionAdapter folder or .safetensors
    c.model.unet_extra.motion_modules = True  # AnimateDiff temporal layers after the spatial ones
    c.optim.trainable = (r"motion_modules",)  # only temporal layers train
    c.optim.frozen = (r"^vae/", r"^image_encoder/")  # frozen pretrained parts (never saved)
    c.optim.lr = 1e-5  # AdamW peak learning rate
    c.data.num_frames = 24  # target frames per clip
    c.data.stride = 4  # source frames between consecutive target frames
    c.train.remat = True  # 24 frames at 768x512 need rematerialisation
    c.evals.heldout.num_frames = 24  # frames per sampled video
    if arg.runlocal:
        config_lib.shrink_for_local(c)
        c.model.unet_extra.motion_modules = True
        c.optim.trainable = (r"motion_modules",)
    return c
