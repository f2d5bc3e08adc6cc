"""The base every training config starts from: all sections, and the fields whose values no stage changes.

`base(interaction, use_ref_pose, form)` is not a config by itself: `configs/demo.py` (the embedded demo) and
`configs/sd15_image.py` (Stable Diffusion 1.5, and through it sd15_video / sd15_tryon) each add the fields that
differ between them (model, run length, learning-rate schedule, data, sampling) and say why where they set them.
"""

import ml_collections


def base(interaction: str, use_ref_pose: bool, form: str) -> ml_collections.ConfigDict:
    """The shared fields; the ablation switches come from each config's args."""
    c = ml_collections.ConfigDict()
    c.task = "image"  # image | video | tryon
    c.seed = 0  # PRNG seed: parameter init, noise, timesteps, data order

    c.model = ml_collections.ConfigDict()
    c.model.motion_modules_path = ""  # AnimateDiff motion-module safetensors (video stage only)
    c.model.init_checkpoint = ""  # earlier stage's workdir: start from its latest (EMA) parameters
    c.model.unet_extra = ml_collections.ConfigDict()  # extra UNet constructor fields (video: motion modules)
    c.model.interaction = interaction  # causal (SCD) | full (ablation: reference also sees the target)
    c.model.use_ref_pose = use_ref_pose  # add pose features of the reference pose to the reference pass
    # shared (SCD: one UNet runs the reference and the target pass) | separate (ablation: the reference pass runs
    # its own copy of the UNet, initialised alike and trained jointly: a ReferenceNet, twice the UNet parameters)
    c.model.reference_net = "shared"
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
    c.diffusion.ref_timestep = 0  # timestep of the reference pass (0 = clean reference)

    c.train = ml_collections.ConfigDict()
    # two_pass (reference pass -> K/V cache -> target pass) | joint ([ref ; tgt] in one pass); "" picks joint for full
    # interaction (a reference that sees the target cannot be cached) and two_pass otherwise
    c.train.form = form or ("joint" if interaction == "full" else "two_pass")
    c.train.nan_policy = "skip"  # non-finite loss/grads: skip the update | stop training (never checkpointed)
    # JAX's persistent compilation cache: a restarted (e.g. preempted) run loads its compiled train step instead of
    # compiling it again; relative to --workdir unless absolute (a folder shared by runs of one config) | "" = off
    c.train.compilation_cache_dir = "compilation_cache"

    c.optim = ml_collections.ConfigDict()
    c.optim.decay_steps = 1000  # wsd: the last steps, decaying linearly to 0 at total_steps (beat constant, docs/results.md)
    c.optim.b1 = 0.9  # AdamW beta1
    c.optim.b2 = 0.999  # AdamW beta2
    c.optim.eps = 1e-8  # AdamW epsilon
    c.optim.weight_decay = 1e-2  # decoupled weight decay
    c.optim.grad_clip = 1.0  # global-norm gradient clipping (0 = off)

    c.data = ml_collections.ConfigDict()  # humandiff.data.loader fields (stage and batch_size come from above)
    c.data.weights = ()  # mixture: sampling weight per name in data.name (normalised); () = equal weights
    c.data.split = "train"  # tfds split
    c.data.num_frames = 1  # target frames per example (1 = image stage)
    c.data.stride = 1  # video: source frames between consecutive target frames
    c.data.drop_prob = 0.1  # condition dropout: no reference and zero image embedding (for CFG)
    c.data.flip = True  # random horizontal flip, shared by frame, pose and reference
    c.data.crop_scale = (0.9, 1.0)  # random crop side as a fraction of the largest box of the output aspect
    c.data.reference_crop_scale = ()  # () = the reference framed as its target; (min, max) = its own random crop
    c.data.clip_size = 224  # CLIP input side, pixels (only used with an image encoder)
    c.data.score_threshold = 0.3  # keypoints with score <= this are not drawn
    c.data.skip_short = False  # skip (True) or reject (False) videos too short for the sampling
    c.data.shuffle = True  # shuffle records per epoch (seeded)
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
    c.ckpt.keep = 3  # checkpoints kept
    c.ckpt.async_save = True  # write checkpoints in a background thread

    c.sample = ml_collections.ConfigDict()  # the model's sampling settings (the evaluations use them)
    c.sample.timestep_spacing = "trailing"  # trailing (zero-SNR) | leading | linspace

    # Evaluations during and after training, by name (humandiff/training/evals.py; `type` picks the evaluator). Both
    # read the run's own data from `split`: synthetic test identities, a built dataset's test split, VITON-HD pairs.
    c.evals = ml_collections.ConfigDict()
    c.evals.heldout = ml_collections.ConfigDict(dict(
        type="heldout",  # sample held-out examples; PSNRs against the true frames, media under evals/heldout/
        every=0,  # steps between runs (0 = only at the end of training)
        split="test",  # data split of the held-out examples
        num_videos=4,  # held-out examples (split over the mesh's data axis when they divide evenly over it)
        num_frames=8,  # target frames per example
        seed=0,  # sampling noise seed (the same at every run, so runs compare)
    ))
    c.evals.loss = ml_collections.ConfigDict(dict(
        type="loss",  # the training loss on held-out batches, fixed timesteps and noise
        every=0,  # steps between runs (0 = only at the end of training)
        split="test",  # data split of the held-out batches
        num_batches=2,  # batches of batch_size examples
        seed=0,  # seed of the batches' timesteps and noise
    ))

    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = 0  # first profiled step (0 = profiling off)
    c.profile.num_steps = 3  # profiled steps
    return c
