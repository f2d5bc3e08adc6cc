"""Embedded demo: SCD on synthetic dancing figures, pixel space, tiny UNet, trains on a 2-core CPU.

No VAE and no CLIP: the UNet denoises 32x32 RGB pixels directly, and its cross-attention context is a single zero
token, so the reference's identity (colours, texture) can reach the target only through the causal self-attention
over `[reference ; target]` tokens: the demo tests SCD's mechanism directly. The fields it shares with the SD-1.5
configs are in `configs/common.py`.

    python -m humandiff.train --config configs/demo.py --workdir /tmp/humandiff_demo
    python -m humandiff.train --config configs/demo.py:interaction=full,use_ref_pose=false --workdir ...

Args (after the colon): runlocal (shrink further), interaction=causal|full, use_ref_pose, form=two_pass|joint
(default: two_pass under causal interaction; full interaction needs, and so defaults to, joint).
"""

import ml_collections

from humandiff import config_lib


def get_config(arg=None):
    """Returns the demo config; see the module docstring for the args."""
    arg = config_lib.parse_arg(arg, runlocal=False, interaction="causal", use_ref_pose=True, form="")
    c = config_lib.load_sibling(__file__, "common").base(arg.interaction, arg.use_ref_pose, arg.form)
    c.total_steps = 2700  # optimizer steps (more steps give better samples; run time: docs/results.md)
    c.batch_size = 4  # global batch: (reference, target) pairs per step (chosen by held-out PSNR at equal time, docs/results.md)
    c.log_every = 20  # steps between metric writes (TensorBoard + progress bar)

    c.model.unet = ml_collections.ConfigDict(dict(  # diffusers UNet2DConditionModel config.json fields
        sample_size=32,  # latent (here: pixel) side
        in_channels=3,  # pixel space: RGB in
        out_channels=3,  # pixel space: RGB noise/velocity out
        block_out_channels=(32, 64),  # channels per resolution level (32x32, 16x16)
        layers_per_block=1,  # resnets per down block
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # self-attention (SCD) at 16x16 and the mid block
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # width of the (zero) image-embedding context token
        attention_head_dim=2,  # heads per level (diffusers naming): 2 heads of 32 channels; 8 of 8: 1.53x the step time
        norm_num_groups=8,  # GroupNorm groups
    ))
    c.model.unet_dir = ""  # local diffusers `unet/` folder to start from ("" = random init from model.unet)
    c.model.vae_dir = ""  # local diffusers `vae/` folder ("" = pixel space, no VAE)
    c.model.image_encoder_dir = ""  # local CLIPVisionModelWithProjection folder ("" = zero context token)
    c.model.pose_encoder = ml_collections.ConfigDict(dict(
        block_out_channels=(32,),  # conv widths per stage; len - 1 stride-2 stages (pixel space: 1 stage)
        coord_channels=True,  # (row, column) input channels: this shallow UNet cannot infer position from padding
    ))

    c.diffusion.snr_gamma = 0.0  # min-SNR-gamma loss weight (0 = plain MSE; see docs/training.md, demo)

    c.train.compute_dtype = "float32"  # float32 | bfloat16 activations (parameters stay float32)
    c.train.remat = False  # rematerialise UNet blocks in the backward pass (memory for FLOPs)

    c.optim.lr = 2e-3  # peak AdamW learning rate (chosen by held-out PSNR, docs/results.md)
    c.optim.warmup_steps = 50  # linear warmup steps
    c.optim.schedule = "wsd"  # after warmup: constant | cosine (decays to 0 at total_steps) | wsd (optim.decay_steps)
    c.optim.ema_decay = 0.99  # EMA of trainable parameters, used for samples (0 = none; ~100-step horizon here)
    c.optim.trainable = (".*",)  # regexes over param paths ("unet/down_blocks_0/..."); a leaf must match one
    c.optim.frozen = ()  # regexes over param paths excluded from training (each must match something)

    c.data.source = "synthetic"  # synthetic (generated on the fly) | tfds (built by data_pipelines.build)
    c.data.data_dir = ""  # tfds: dataset folder printed by data_pipelines.build
    c.data.name = ""  # tfds: dataset name under data_dir (tiktok | ubc_fashion | video_folder | viton_hd), or
    # several separated by commas ("tiktok,ubc_fashion") mixed in one run; data_dir is then the build output root
    c.data.resolution = (32, 32)  # (height, width) of training images and poses, pixels
    c.data.min_margin = 2  # image: minimum |ref - tgt| frame distance
    c.data.num_threads = 2  # grain threads per process (0 = main thread, fully deterministic)
    c.data.prefetch = 4  # examples prefetched per process

    c.mesh.cpu_devices = 2  # CPU-only host: split it into 2 devices (data parallel; XLA_FLAGS' count wins; 0 = one)

    c.ckpt.every = 250  # steps between checkpoints

    c.sample.sampler = "dpmsolver++"  # ddim | dpmsolver++ (DPM-Solver++ 2M) | euler
    c.sample.num_steps = 5  # denoising steps (sampler and steps chosen by held-out PSNR, docs/results.md)
    c.sample.guidance_scale = 1.25  # classifier-free guidance on the reference (chosen by held-out PSNR, docs/results.md)
    # Held-out synthetic identities sampled (test split: never trained on), split over the devices. The gain over
    # copying the reference varies a lot between identities: enough of them for a small standard error (docs/results.md).
    c.evals.heldout.num_videos = 16
    c.evals.heldout.num_frames = 8  # target frames per identity

    if arg.runlocal:
        c.total_steps = 20
        c.optim.decay_steps = 5
        c.batch_size = 4
        c.data.synthetic.num_videos = 8
        c.ckpt.every = 10
        c.sample.num_steps = 4
        c.evals.heldout.num_videos = 2
        c.evals.heldout.num_frames = 2
        c.evals.loss.num_batches = 1
        c.log_every = 5
    return c
