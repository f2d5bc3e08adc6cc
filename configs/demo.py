"""Embedded demo: SCD on synthetic dancing figures, pixel space, tiny UNet, trains on a 2-core CPU.

No VAE and no CLIP: the UNet denoises 32x32 RGB pixels directly, and its cross-attention context is a single zero
token, so the reference's identity (colours, texture) can reach the target only through the causal self-attention
over `[reference ; target]` tokens: the demo tests SCD's mechanism directly.

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
    c = ml_collections.ConfigDict()
    c.task = "image"  # image | video | tryon
    c.seed = 0  # PRNG seed: parameter init, noise, timesteps, data order
    c.total_steps = 2700  # optimizer steps (about 12 min on 2 CPU cores; more steps give better samples)
    c.batch_size = 4  # global batch: (reference, target) pairs per step (at equal time 4 beat 2 and 8; 8 beat 16)
    c.log_every = 20  # steps between metric writes (TensorBoard + progress bar)

    c.model = ml_collections.ConfigDict()
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
    c.model.motion_modules_path = ""  # AnimateDiff motion-module safetensors (video stage only)
    c.model.init_checkpoint = ""  # earlier stage's workdir: start from its latest (EMA) parameters
    c.model.unet_extra = ml_collections.ConfigDict()  # extra UNet constructor fields (video: motion modules)
    c.model.pose_encoder = ml_collections.ConfigDict(dict(
        block_out_channels=(32,),  # conv widths per stage; len - 1 stride-2 stages (pixel space: 1 stage)
        coord_channels=True,  # (row, column) input channels: this shallow UNet cannot infer position from padding
    ))
    c.model.interaction = arg.interaction  # causal (SCD) | full (ablation: reference also sees the target)
    c.model.use_ref_pose = arg.use_ref_pose  # add pose features of the reference pose to the reference pass
    c.model.pose_injection = "conv_in"  # conv_in (added after conv_in) | input (added to the noisy input)
    c.model.attention_impl = "auto"  # attention kernel: auto | xla | cudnn | splash | interpret
    c.model.attention_query_chunk = 1024  # XLA attention: queries per chunk in layers with more (0 = all at once)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.num_train_timesteps = 1000  # discrete training timesteps
    c.diffusion.beta_schedule = "scaled_linear"  # SD-1.5 schedule
    c.diffusion.beta_start = 0.00085  # first beta
    c.diffusion.beta_end = 0.012  # last beta
    c.diffusion.zero_snr = True  # rescale betas so the last timestep has zero SNR
    c.diffusion.prediction_type = "v_prediction"  # epsilon | v_prediction
    c.diffusion.noise_offset = 0.05  # std of a per-sample, per-channel constant added to the noise
    c.diffusion.snr_gamma = 0.0  # min-SNR-gamma loss weight (0 = plain MSE; see docs/training.md, demo)
    c.diffusion.ref_timestep = 0  # timestep of the reference pass (0 = clean reference)

    c.train = ml_collections.ConfigDict()
    # two_pass (reference pass -> K/V cache -> target pass) | joint ([ref ; tgt] in one pass; needed by full)
    c.train.form = arg.form or ("joint" if arg.interaction == "full" else "two_pass")
    c.train.compute_dtype = "float32"  # float32 | bfloat16 activations (parameters stay float32)
    c.train.remat = False  # rematerialise UNet blocks in the backward pass (memory for FLOPs)
    c.train.nan_policy = "skip"  # non-finite loss/grads: skip the update | stop training (never checkpointed)

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-3  # peak AdamW learning rate (2e-3 beat 1e-3 by 1.7 dB at 450 x 16 steps)
    c.optim.warmup_steps = 50  # linear warmup steps
    c.optim.schedule = "wsd"  # after warmup: constant | cosine (decays to 0 at total_steps) | wsd (see below)
    c.optim.decay_steps = 1000  # wsd: the last steps, decaying linearly to 0 at total_steps (+0.5 dB over constant)
    c.optim.b1 = 0.9  # AdamW beta1
    c.optim.b2 = 0.999  # AdamW beta2
    c.optim.eps = 1e-8  # AdamW epsilon
    c.optim.weight_decay = 1e-2  # decoupled weight decay
    c.optim.grad_clip = 1.0  # global-norm gradient clipping (0 = off)
    c.optim.ema_decay = 0.99  # EMA of trainable parameters, used for samples (0 = none; ~100-step horizon here)
    c.optim.trainable = (".*",)  # regexes over param paths ("unet/down_blocks_0/..."); a leaf must match one
    c.optim.frozen = ()  # regexes over param paths excluded from training (each must match something)

    c.data = ml_collections.ConfigDict()  # humandiff.data.loader fields (stage and batch_size come from above)
    c.data.source = "synthetic"  # synthetic (generated on the fly) | tfds (built by data_pipelines.build)
    c.data.data_dir = ""  # tfds: dataset folder printed by data_pipelines.build
    c.data.name = ""  # tfds: dataset name under data_dir (tiktok | ubc_fashion | video_folder | viton_hd), or
    # several separated by commas ("tiktok,ubc_fashion") mixed in one run; data_dir is then the build output root
    c.data.weights = ()  # mixture: sampling weight per name in data.name (normalised); () = equal weights
    c.data.split = "train"  # tfds split
    c.data.resolution = (32, 32)  # (height, width) of training images and poses, pixels
    c.data.num_frames = 1  # target frames per example (1 = image stage)
    c.data.stride = 1  # video: source frames between consecutive target frames
    c.data.min_margin = 2  # image: minimum |ref - tgt| frame distance
    c.data.drop_prob = 0.1  # condition dropout: no reference and zero image embedding (for CFG)
    c.data.flip = True  # random horizontal flip, shared by frame, pose and reference
    c.data.crop_scale = (0.9, 1.0)  # random crop side as a fraction of the largest box of the output aspect
    c.data.clip_size = 224  # CLIP input side, pixels (only used with an image encoder)
    c.data.score_threshold = 0.3  # keypoints with score <= this are not drawn
    c.data.skip_short = False  # skip (True) or reject (False) videos too short for the sampling
    c.data.shuffle = True  # shuffle records per epoch (seeded)
    c.data.num_threads = 2  # grain threads per process (0 = main thread, fully deterministic)
    c.data.prefetch = 4  # examples prefetched per process
    c.data.num_workers = 0  # grain worker processes per host (0 = threads only)
    c.data.synthetic = ml_collections.ConfigDict(dict(
        num_videos=512,  # training identities (one synthetic figure per video)
        num_frames=24,  # frames per synthetic video
        height=32,  # synthetic frame height, pixels
        width=32,  # synthetic frame width, pixels
        seed=0,  # seed offset of the training videos (held-out evaluation videos use seed + 100000)
        travel=0.1,  # largest sideways wandering of a figure over a video, fraction of the width
    ))

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)  # devices along (data, fsdp, tensor); one -1 takes the rest
    c.mesh.cpu_devices = 2  # CPU-only host: split it into 2 devices (data parallel; XLA_FLAGS' count wins; 0 = one)
    c.sharding = ml_collections.ConfigDict()
    c.sharding.mode = "logical"  # logical (logical_rules over named dims) | regex (rules over param paths)
    c.sharding.logical_rules = (  # (logical dim name, mesh axis | None), tried in order; see docs/training.md
        ("heads", "tensor"),  # attention q/k/v outputs and to_out inputs (Megatron-style)
        ("mlp", "tensor"),  # feed-forward hidden width
        ("conv_out", "fsdp"),  # conv output channels (and conv biases)
        ("conv_in", "fsdp"),  # fallback when conv_out does not divide (e.g. the UNet's 4 output channels)
        ("embed", "fsdp"),  # Dense input/output width
        ("temb", "fsdp"),  # time-embedding width
        ("conv_h", None), ("conv_w", None), ("norm", None), ("pos", None),  # replicated
    )
    c.sharding.rules = (  # mode=regex: (regex over param path, strategy), first match wins; fsdp|tensor|replicate
        (r"(kernel|embedding)$", "fsdp"),
        (r".*", "replicate"),
    )
    c.sharding.min_size = 2 ** 14  # parameters with fewer elements stay replicated

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every = 250  # steps between checkpoints
    c.ckpt.keep = 3  # checkpoints kept
    c.ckpt.async_save = True  # write checkpoints in a background thread

    c.sample = ml_collections.ConfigDict()
    c.sample.every = 0  # steps between sample grids/videos (0 = only once, at the end)
    c.sample.sampler = "dpmsolver++"  # ddim | dpmsolver++ (DPM-Solver++ 2M) | euler
    c.sample.num_steps = 5  # denoising steps (DPM-Solver++ with 5 scored above 10 and 20, and above DDIM with 10)
    c.sample.timestep_spacing = "trailing"  # trailing (zero-SNR) | leading | linspace
    c.sample.guidance_scale = 1.25  # classifier-free guidance on the reference (1.25 > 1.5 > 2 > 3 in PSNR)
    # Held-out synthetic identities sampled (test split: never trained on), split over the devices. Per identity the
    # gain over copying the reference varies with SD about 2 dB, so 4 identities left an SE of about 1 dB; 16 halve it.
    c.sample.num_videos = 16
    c.sample.num_frames = 8  # frames per sampled video

    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = 0  # first profiled step (0 = profiling off)
    c.profile.num_steps = 3  # profiled steps

    if arg.runlocal:
        c.total_steps = 20
        c.optim.decay_steps = 5
        c.batch_size = 4
        c.data.synthetic.num_videos = 8
        c.ckpt.every = 10
        c.sample.every = 0
        c.sample.num_steps = 4
        c.sample.num_videos = 2
        c.sample.num_frames = 2
        c.log_every = 5
    return c
