"""Stage 1 (image): SCD fine-tuning of Stable Diffusion 1.5 on TikTok + UBC-Fashion frame pairs.

Pretrained weights come from local diffusers folders (never downloaded): `<sd15>/unet`, `<sd15>/vae` and a
CLIPVisionModelWithProjection `image_encoder` folder. Defaults follow the public ReferenceNet recipe
(AnimateAnyone stage 1): lr 1e-5, zero-terminal-SNR v-prediction, noise offset 0.05, min-SNR gamma 5, condition
dropout 0.1, reference at t=0.

    python -m humandiff.train \
        --config configs/sd15_image.py:sd15=/models/sd15,image_encoder=/models/clip_img,data_dir=/data/built \
        --workdir /work/scd_stage1

trains on TikTok and UBC-Fashion mixed (both built by `data_pipelines.build --data_dir /data/built`, so
/data/built/tiktok/1.0.0 and /data/built/ubc_fashion/1.0.0 exist), half the examples from each. Other proportions:
`--config.data.weights=1,3` (a quarter TikTok); one dataset: `--config.data.name=tiktok`.

Args: sd15 (folder with unet/ and vae/), image_encoder (folder), data_dir (the build output root holding the
datasets), runlocal, interaction, use_ref_pose, form.
"""

import os

import ml_collections

from humandiff import config_lib


def get_config(arg=None):
    """Returns the stage-1 config; see the module docstring for the args."""
    arg = config_lib.parse_arg(arg, sd15="", image_encoder="", data_dir="", runlocal=False, interaction="causal",
                               use_ref_pose=True, form="")
    c = config_lib.load_sibling(__file__, "common").base(arg.interaction, arg.use_ref_pose, arg.form)
    c.total_steps = 30_000  # optimizer steps
    c.batch_size = 64  # global (reference, target) pairs per step
    c.log_every = 50  # steps between metric writes

    c.model.unet = ml_collections.ConfigDict(dict(  # SD-1.5 UNet (read from unet_dir/config.json when given)
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32))
    c.model.unet_dir = os.path.join(arg.sd15, "unet") if arg.sd15 else ""  # diffusers unet/ folder
    c.model.vae_dir = os.path.join(arg.sd15, "vae") if arg.sd15 else ""  # diffusers vae/ folder (latent space)
    c.model.image_encoder_dir = arg.image_encoder  # CLIP image encoder folder (1-token context)
    c.model.pose_encoder = ml_collections.ConfigDict(dict(
        block_out_channels=(16, 32, 96, 256),  # conv widths per stage; 3 stride-2 stages = the VAE's 8x
        coord_channels=False,  # SD-1.5's deep UNet infers position itself (and ControlNet weights read 3 channels)
    ))

    c.diffusion.snr_gamma = 5.0  # min-SNR-gamma loss weight (the demo trains with plain MSE instead)

    c.train.compute_dtype = "bfloat16"  # bf16 activations, fp32 master weights
    c.train.remat = True  # SD-1.5 at 768x512 needs rematerialisation on 16 GiB parts

    c.optim.lr = 1e-5  # AdamW peak learning rate
    c.optim.warmup_steps = 500  # linear warmup steps
    c.optim.schedule = "constant"  # then the peak, held (the demo's wsd decay is for its short from-scratch run)
    c.optim.ema_decay = 0.9999  # EMA of trainable parameters
    c.optim.trainable = (r"^(unet|reference_unet|pose_encoder)/",)  # UNet(s) and pose encoder are trained
    c.optim.frozen = (r"^vae/", r"^image_encoder/")  # VAE and CLIP stay frozen (loaded, never saved)

    c.data.source = "tfds"  # ArrayRecord datasets written by data_pipelines.build
    c.data.data_dir = arg.data_dir  # output root of data_pipelines.build (holds <name>/<version>/ per dataset)
    c.data.name = "tiktok,ubc_fashion"  # datasets mixed in one run (comma-separated), or one: "tiktok"
    c.data.weights = ()  # sampling weight per name in data.name, e.g. (1, 3); () = equal proportions
    c.data.resolution = (768, 512)  # (height, width), pixels
    c.data.min_margin = 8  # minimum |ref - tgt| frame distance
    c.data.num_threads = 16  # grain threads per process
    c.data.prefetch = 64  # examples prefetched per process

    c.mesh.shape = (-1, 1, 1)  # pure data parallel; e.g. (1, -1, 1) for FSDP on large pods
    c.mesh.cpu_devices = 0  # CPU-only host: JAX devices to split it into (0 = one; GPUs and TPUs unaffected)

    c.ckpt.every = 1000  # steps between checkpoints
    c.ckpt.keep = 3  # checkpoints kept
    c.sample.sampler = "ddim"  # the model's sampler (evaluations and the sample CLI's default)
    c.sample.num_steps = 20  # DDIM steps
    c.sample.guidance_scale = 3.5  # CFG on the reference
    c.evals.heldout.every = 2000  # steps between held-out sample grids
    c.evals.heldout.num_frames = 16  # frames per sampled video
    c.evals.loss.every = 500  # steps between held-out losses
    c.evals.loss.num_batches = 4  # held-out batches

    if arg.runlocal:
        config_lib.shrink_for_local(c)
    return c
