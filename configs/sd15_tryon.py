"""Virtual try-on (VITON-HD): SCD with the garment as reference; masked forward process, loss inside the mask.

The target latent is noised only inside the garment mask M: `x_t = noised * M + x0 * (1 - M)`, and the loss is
taken only inside M.

    python -m humandiff.train \
        --config configs/sd15_tryon.py:sd15=/models/sd15,image_encoder=/models/clip_img,data_dir=/data/built \
        --workdir /work/scd_tryon

Args: those of sd15_image.
"""

from humandiff import config_lib


def get_config(arg=None):
    """Returns the try-on config (sd15_image with the overrides below)."""
    arg = config_lib.parse_arg(arg, sd15="", image_encoder="", data_dir="", runlocal=False, interaction="causal",
                               use_ref_pose=False, form="two_pass")
    image = config_lib.load_sibling(__file__, "sd15_image")
    c = image.get_config(f"sd15={arg.sd15},image_encoder={arg.image_encoder},data_dir={arg.data_dir},"
                         f"interaction={arg.interaction},"
                         f"use_ref_pose={arg.use_ref_pose},form={arg.form}")
    c.task = "tryon"  # masked forward process + masked loss; batch carries tryon_mask
    c.total_steps = 20_000  # optimizer steps
    c.batch_size = 32  # global (garment, person) pairs per step
    c.data.name = "viton_hd"  # VITON-HD dataset written by data_pipelines.build
    c.data.resolution = (512, 384)  # (height, width), pixels
    c.data.drop_prob = 0.1  # drop the garment reference for CFG
    c.evals.heldout.split = c.evals.loss.split = "test_paired"  # each person wears the garment shown: a true target
    c.evals.heldout.num_frames = 1  # try-on samples images
    if arg.runlocal:
        config_lib.shrink_for_local(c)
    return c
