r"""humandiff's SCD train step against a PyTorch ReferenceNet train step at the same sizes, in alternated processes.

    PYTHONPATH=. python benchmarks/vs_referencenet.py --pairs 3 --steps 3 \
        --out benchmarks/results/vs_referencenet_cpu.json

The peer is the Moore-AnimateAnyone recipe, written here from its description: two diffusers
`UNet2DConditionModel`s (reference + denoising); every `BasicTransformerBlock` self-attention of the reference UNet
stores its input (the block's norm1 output) and the denoising UNet's self-attention at the same place attends over
`[own tokens ; reference tokens]` (keys and values from its own to_k / to_v); a small pose guider's features are
added after the denoising UNet's conv_in; v-prediction MSE on the target, AdamW over both UNets and the guider,
grad clipping at 1, float32. humandiff runs its own step (`training.step.make_train_step`, compiled as the trainer
does, through `benchmarks/train_step.py`'s `build`) on the same sizes: UNet (64, 128, 256, 256), 8 heads, 2 layers
per block, cross-attention width 128 fed one zero token, 4-channel 32x32 latents (the synthetic images padded to 4
channels by `ChannelPad`, a stand-in for the VAE that costs nothing), batch 2, no EMA.

Each side runs in a fresh child process; sides alternate (torch, humandiff, torch, ...) for `--pairs` pairs, so a
load change on a shared machine hits both. Per process: seconds of each timed step after `--warmup` steps (median),
samples/s, peak RSS of the child (`ru_maxrss` from `os.wait4`), compile seconds and XLA's memory analysis
(humandiff). XLA's FLOP count of each humandiff side comes from one more child that only lowers the step (lowering
a second copy of the step would add to the timed process's peak RSS; the trainer never does it). The script
asserts that the parameter counts of humandiff's one UNet + pose encoder and of one torch UNet + pose guider agree
within 2%. `--set KEY=VALUE` passes config overrides to the humandiff side (e.g.
`--set model.attention_query_chunk=0`, `--set mesh.cpu_devices=2`), `--key_block` the blocked attention's key block
and `--xla_flags` extra XLA flags; `--variant NAME=ITEM;ITEM` adds further humandiff sides to the alternation, so
variants are measured side by side by the same harness; `--key` names the run's entry in the JSON. `--cpus 0` pins
every child to CPU 0 (torch then runs one thread): on a machine shared with other jobs, torch's OpenMP threads
otherwise wait on each other (one 2-thread torch step took 24-34 s under load, 3.3 s pinned to one core).

Where a humandiff process's memory goes: its row's `rss_phases` holds the resident set at the end of each phase and
the phase's own peak (import, model, compile, trim, state, steps; `train_step.build`). `--compilation_cache DIR` (or
the variant item `compilation_cache=DIR`) gives the humandiff side JAX's persistent compilation cache: the first
process writes the step there, later ones load it instead of compiling (the row counts the cache's hits and misses);
the item `compile_in_child=1` compiles in a separate compile-only process first, so that the timed one loads it.
`--no_flops` skips the FLOP-count processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCKS = (64, 128, 256, 256)
HEADS = 8
CROSS_DIM = 128
LAYERS = 2
LATENT = 32
CHANNELS = 4
BATCH = 2
POSE_CHANNELS = 32  # the pose encoder / guider's one conv stage (pixel-space latents: no downsampling)
DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
PARAM_TOLERANCE = 0.02


# ---------------------------------------------------------------- torch ReferenceNet --------------------------------

def _torch_side(steps: int, warmup: int, threads: int) -> dict:
    """Builds and times the torch ReferenceNet step; returns the row (no RSS: the parent reads it)."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))  # torch's default ignores a CPU affinity

    def unet():
        return UNet2DConditionModel(sample_size=LATENT, in_channels=CHANNELS, out_channels=CHANNELS,
                                    block_out_channels=BLOCKS, layers_per_block=LAYERS, down_block_types=DOWN,
                                    up_block_types=UP, cross_attention_dim=CROSS_DIM, attention_head_dim=HEADS,
                                    norm_num_groups=32)

    class SelfAttention:
        """Processor for a BasicTransformerBlock's attn1: "write" keeps its input for the denoising UNet, "read"
        attends over [own tokens ; the stored reference tokens]; "off" is plain self-attention."""

        def __init__(self, bank: dict, name: str):
            self.bank, self.name, self.mode = bank, name, "off"

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                     **kwargs):
            context = hidden_states
            if self.mode == "write":
                self.bank[self.name] = hidden_states
            elif self.mode == "read":
                context = torch.cat([hidden_states, self.bank[self.name]], dim=1)
            b, n, _ = hidden_states.shape
            heads = attn.heads
            q = attn.to_q(hidden_states).view(b, n, heads, -1).transpose(1, 2)
            k = attn.to_k(context).view(b, context.shape[1], heads, -1).transpose(1, 2)
            v = attn.to_v(context).view(b, context.shape[1], heads, -1).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
            return attn.to_out[1](attn.to_out[0](out))

    def instrument(model, bank: dict, mode: str) -> None:
        procs = {}
        for name, proc in model.attn_processors.items():
            if name.endswith("attn1.processor") and "transformer_blocks" in name:
                p = SelfAttention(bank, name)
                p.mode = mode
                procs[name] = p
            else:
                procs[name] = proc
        model.set_attn_processor(procs)

    class PoseGuider(torch.nn.Module):
        """conv 3->32, SiLU, zero-initialised conv 32->64: the features added after conv_in."""

        def __init__(self):
            super().__init__()
            self.conv_in = torch.nn.Conv2d(3, POSE_CHANNELS, 3, padding=1)
            self.conv_out = torch.nn.Conv2d(POSE_CHANNELS, BLOCKS[0], 3, padding=1)
            torch.nn.init.zeros_(self.conv_out.weight)
            torch.nn.init.zeros_(self.conv_out.bias)

        def forward(self, pose):
            return self.conv_out(F.silu(self.conv_in(pose)))

    reference, denoising, guider = unet(), unet(), PoseGuider()
    bank: dict = {}
    instrument(reference, bank, "write")
    instrument(denoising, bank, "read")
    pose_features = {}
    denoising.conv_in.register_forward_hook(lambda mod, inp, out: out + pose_features["x"])
    params = [*reference.parameters(), *denoising.parameters(), *guider.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    alphas = torch.cos(torch.linspace(0, 1, 1000) * torch.pi / 2).clamp(min=1e-4)  # any schedule: same cost
    g = torch.Generator().manual_seed(0)
    z_ref = torch.randn(BATCH, CHANNELS, LATENT, LATENT, generator=g)
    z0 = torch.randn(BATCH, CHANNELS, LATENT, LATENT, generator=g)
    pose = torch.rand(BATCH, 3, LATENT, LATENT, generator=g)
    context = torch.zeros(BATCH, 1, CROSS_DIM)

    def step() -> float:
        t0 = time.perf_counter()
        t = torch.randint(0, 1000, (BATCH,))
        noise = torch.randn_like(z0)
        a = alphas[t].view(-1, 1, 1, 1)
        s = (1 - a ** 2).sqrt()
        z_t, v = a * z0 + s * noise, a * noise - s * z0
        bank.clear()
        reference(z_ref, torch.zeros(BATCH, dtype=torch.long), encoder_hidden_states=context)
        pose_features["x"] = guider(pose)
        pred = denoising(z_t, t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return time.perf_counter() - t0

    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"step_s": times, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "params_one_unet_plus_pose": count(denoising) + count(guider),
            "params_total": count(reference) + count(denoising) + count(guider)}


# ---------------------------------------------------------------- humandiff ------------------------------------------

def humandiff_overrides(extra: dict) -> dict:
    """configs/demo.py overrides that give the sizes above (plus the caller's)."""
    unet = dict(sample_size=LATENT, in_channels=CHANNELS, out_channels=CHANNELS, block_out_channels=BLOCKS,
                layers_per_block=LAYERS, down_block_types=DOWN, up_block_types=UP, cross_attention_dim=CROSS_DIM,
                attention_head_dim=HEADS, norm_num_groups=32)
    out = {f"model.unet.{k}": v for k, v in unet.items()}
    out.update({"model.pose_encoder.block_out_channels": (POSE_CHANNELS,), "model.pose_encoder.coord_channels": False,
                "batch_size": BATCH, "data.resolution": (LATENT, LATENT), "optim.ema_decay": 0.0,
                "optim.frozen": ("^vae/",), "data.num_threads": 0, "data.prefetch": 0, "mesh.cpu_devices": 0,
                "train.form": "two_pass"})
    out.update(extra)
    return out


def _channel_pad():
    """A parameter-light stand-in for the VAE: images padded with zero channels to CHANNELS latent channels."""
    import flax.linen as nn
    import jax.numpy as jnp

    class ChannelPad(nn.Module):
        block_out_channels = (1,)  # one level: latents at the image's resolution (Models.downscale == 1)
        scaling_factor = 1.0

        @nn.compact
        def encode(self, images):
            offset = self.param("offset", nn.initializers.zeros, (CHANNELS,))  # frozen, so init has a tree
            pad = jnp.zeros(images.shape[:-1] + (CHANNELS - images.shape[-1],), images.dtype)
            mean = jnp.concatenate([images, pad], axis=-1) + offset
            return mean, jnp.full_like(mean, -30.0)

        def __call__(self, images):
            return self.encode(images)

    return ChannelPad()


def use_key_block(block: int | None) -> None:
    """Sets the step's `AttentionConfig.xla_key_block` (0: `jax.nn.dot_product_attention`) in this process.

    The run config has no field for it yet, so the benchmark wraps the one function that builds the model's
    `AttentionConfig` from the config. None: unchanged (the field's default: 512 keys per block on CPU).
    """
    from humandiff.training import sharding

    if block is not None:
        base = sharding.attention_config
        sharding.attention_config = lambda config: base(config).replace(xla_key_block=block)


def _humandiff_config(overrides: dict, key_block: int | None):
    """The run config of the humandiff side, after the process-wide settings the trainer makes (XLA flags, CPU
    devices), which must precede JAX's first computation."""
    import jax

    from humandiff import config_lib
    from humandiff.training import runtime

    use_key_block(key_block)
    runtime.use_memory_scheduler_on_cpu()
    config = config_lib.load(os.path.join(os.path.dirname(HERE), "configs", "demo.py"), overrides)
    runtime.use_cpu_devices(int(config.mesh.cpu_devices))
    config.mesh.shape = (-1, 1, 1)
    config_lib.validate(config, jax.device_count())
    return config


def _cache_row(cache_events: dict, entries_before: int | None) -> dict:
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    if not cache:
        return {}
    entries = len(os.listdir(cache)) if os.path.isdir(cache) else 0
    return {"compilation_cache": {"dir": cache, "files_before": entries_before, "files_after": entries,
                                  "events": dict(cache_events)}}


def _humandiff_side(steps: int, warmup: int, overrides: dict, key_block: int | None, compile_only: bool = False
                    ) -> dict:
    """Builds (compiles) and times humandiff's train step as the trainer runs it; returns the row (no FLOPs:
    `_humandiff_flops` counts them in another process, so that this one's peak RSS is the trainer's).

    The row's `rss_phases` holds the resident set at the end of each phase and the phase's own peak, in MB: "import"
    (Python, JAX, humandiff), then `train_step.build`'s phases, then "steps"; `peak_rss_mb_phases` is their maximum
    (recording a phase resets the kernel's peak count, so the parent's `ru_maxrss` only sees the last phase).
    `compile_only`: only compile (writing the compilation cache, if one is set), allocate and time nothing."""
    sys.path.insert(0, HERE)
    import jax

    from humandiff.training import modeling, runtime
    import train_step as bench  # benchmarks/train_step.py

    phases: dict = {}
    bench.end_phase(phases, "import")
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    entries_before = len(os.listdir(cache)) if cache and os.path.isdir(cache) else 0
    with runtime.compilation_cache_events() as events, tempfile.TemporaryDirectory() as workdir:
        config = _humandiff_config(overrides, key_block)
        f = bench.build(config, workdir, {"vae": _channel_pad()}, allocate=not compile_only, count_flops=False,
                        phases=phases)
    common = {"compile_s": f["compile_s"], "rss_phases": phases, "key_block": key_block,
              "devices": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__,
              **_cache_row(events, entries_before)}
    if compile_only:
        return dict(common, xla_memory=bench._memory(f["compiled"]), peak_rss_mb_phases=bench.max_phase_peak(phases))
    for _ in range(warmup):
        bench._step(f)
    times = [bench._step(f) for _ in range(steps)]
    bench.end_phase(phases, "steps")
    # After the steps: XLA's memory analysis leaves ~340 MB resident in this process that the trainer never holds
    # (it never asks for it); before them, the steps' peak read that much too high.
    params = f["state"]["params"]
    return dict(common, xla_memory=bench._memory(f["compiled"]), step_s=times,
                executable_flops=bench._flops(f["compiled"]),
                peak_rss_mb_phases=bench.max_phase_peak(phases),
                params_one_unet_plus_pose=modeling.count_params(params["unet"]) +
                modeling.count_params(params["pose_encoder"]))


def _humandiff_flops(overrides: dict, key_block: int | None) -> dict:
    """FLOPs of the humandiff step by XLA's cost analysis (lowered with all attention queries and keys at once;
    lowering only, nothing compiled)."""
    sys.path.insert(0, HERE)
    from humandiff.training import input as train_input, sharding
    import train_step as bench

    config = _humandiff_config(overrides, key_block)
    # Counted unblocked: the cost analysis counts a loop's body once, and the blocked attention loops over key blocks
    # (the same math: the blocked form is exact, its backward recomputes the scores once more, which is not counted).
    use_key_block(0)
    local = next(train_input.train_iterator(config))
    return {"flops_per_step": bench.step_flops(config, {"vae": _channel_pad()}, sharding.make_mesh(config), local)}


# ---------------------------------------------------------------- driver ---------------------------------------------

def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME=ITEM;ITEM;...` -> (name, spec) of a humandiff variant; an ITEM is `key_block=N`, `xla_flags=FLAGS` or a
    config override `KEY=VALUE`. Example: `blocked512=key_block=512;mesh.cpu_devices=2`."""
    name, sep, items = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=ITEM;ITEM;...")
    spec = {"set": [], "key_block": None, "xla_flags": "", "compilation_cache": "", "compile_in_child": False}
    for item in filter(None, items.split(";")):
        key, _, value = item.partition("=")
        if key == "key_block":
            spec["key_block"] = int(value)
        elif key == "xla_flags":
            spec["xla_flags"] = value
        elif key == "compilation_cache":
            spec["compilation_cache"] = value
        elif key == "compile_in_child":
            spec["compile_in_child"] = value not in ("", "0", "false", "False")
        else:
            spec["set"].append(item)
    return name, spec


def run_child(side: str, spec: dict | None, args, mode: str = "") -> dict:
    """One side in a fresh process (`spec`: a humandiff variant, None for torch): its JSON row plus the child's peak
    RSS and wall time. `mode` "humandiff_flops": only count the variant's FLOPs; "humandiff_compile": only compile.
    """
    before = None
    if spec is not None and spec.get("compile_in_child") and not mode:
        if not spec.get("compilation_cache"):
            raise SystemExit(f"{side}: compile_in_child needs compilation_cache=DIR")
        before = run_child(side, spec, args, "humandiff_compile")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    mode = mode or ("torch" if spec is None else "humandiff")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--child_out", out, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--torch_threads", str(args.torch_threads)]
    env = dict(os.environ)
    if spec is not None:
        cmd += [] if spec["key_block"] is None else ["--key_block", str(spec["key_block"])]
        cmd += [a for s in spec["set"] for a in ("--set", s)]
        if spec["xla_flags"]:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {spec['xla_flags']}".strip()
        if spec.get("compilation_cache"):  # every compile is cached (JAX's default skips those under 1 s)
            env.update(JAX_COMPILATION_CACHE_DIR=os.path.abspath(spec["compilation_cache"]),
                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    t0 = time.perf_counter()
    cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else None
    proc = subprocess.Popen(cmd, env=env, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{side} child failed with exit status {os.waitstatus_to_exitcode(status)}: {' '.join(cmd)}")
    with open(out, encoding="utf-8") as fh:
        row = json.load(fh)
    os.unlink(out)
    # A humandiff child resets the kernel's peak count per phase (train_step.end_phase), so its peak is the phases'
    # maximum; what it does after its last phase (XLA's memory and cost analyses, which the trainer never runs)
    # stays out. The torch child's peak is the kernel's count.
    peak = row["peak_rss_mb_phases"] if "peak_rss_mb_phases" in row else usage.ru_maxrss / 1024
    row.update(peak_rss_mb=peak, child_ru_maxrss_mb=usage.ru_maxrss / 1024, process_wall_s=wall,
               load_avg_after=os.getloadavg())
    if before is not None:
        row["compile_child"] = before
    if "step_s" in row:
        row["median_step_s"] = statistics.median(row["step_s"])
        row["samples_per_s"] = BATCH / row["median_step_s"]
    return row


def summarise(runs: dict, flops: dict) -> dict:
    """Medians over processes of each side, and each humandiff side's ratios to torch."""
    keys = ("median_step_s", "samples_per_s", "peak_rss_mb")
    med = {side: {k: statistics.median(r[k] for r in rows) for k in keys} for side, rows in runs.items()}
    t = med["torch"]
    out = {"median": med}
    for side in runs:
        if side == "torch":
            continue
        h = med[side]
        out[side] = {
            "samples_per_s_over_torch": h["samples_per_s"] / t["samples_per_s"],
            "peak_rss_over_torch": h["peak_rss_mb"] / t["peak_rss_mb"],
            "step_time_over_torch_per_pair": [hr["median_step_s"] / tr["median_step_s"]
                                              for tr, hr in zip(runs["torch"], runs[side])],
            "compile_s": [r["compile_s"] for r in runs[side]],
            "achieved_gflop_per_s": (flops[side]["flops_per_step"] / h["median_step_s"] / 1e9
                                     if side in flops else None),
            "acceptance": {"samples_per_s_ge_1x": h["samples_per_s"] >= t["samples_per_s"],
                           "peak_rss_le_0.6x": h["peak_rss_mb"] <= 0.6 * t["peak_rss_mb"]}}
    return out


def check_params(runs: dict) -> dict:
    """Asserts that one torch UNet + guider and humandiff's UNet + pose encoder agree within PARAM_TOLERANCE."""
    ours = runs["humandiff"][0]["params_one_unet_plus_pose"]
    theirs = runs["torch"][0]["params_one_unet_plus_pose"]
    rel = abs(ours - theirs) / theirs
    assert rel <= PARAM_TOLERANCE, f"parameter counts differ by {rel:.2%}: humandiff {ours}, torch {theirs}"
    return {"humandiff_unet_plus_pose": ours, "torch_one_unet_plus_guider": theirs,
            "torch_total_two_unets_plus_guider": runs["torch"][0]["params_total"], "relative_difference": rel}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3, help="rounds of alternated processes (torch, humandiff, variants)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per process after compiling")
    p.add_argument("--torch_threads", type=int, default=0, help="torch intra-op threads (0: one per allowed CPU)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of the humandiff side")
    p.add_argument("--key_block", type=int, default=None,
                   help="humandiff side: AttentionConfig.xla_key_block (0: off; default: the field's default)")
    p.add_argument("--xla_flags", default="", help="extra XLA_FLAGS of the humandiff side")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ITEM;ITEM",
                   help="another humandiff side in the alternation (see parse_variant); repeatable")
    p.add_argument("--no_torch", action="store_true", help="humandiff sides only (no ratios to torch)")
    p.add_argument("--cpus", default="", help="pin every child process to these CPUs, e.g. '0' ('' = no pinning)")
    p.add_argument("--compilation_cache", default="",
                   help="JAX persistent compilation cache folder of the humandiff side ('' = none)")
    p.add_argument("--no_flops", action="store_true", help="skip the FLOP-count processes")
    p.add_argument("--key", default="default", help="entry of this run in the JSON")
    p.add_argument("--out", default=os.path.join(HERE, "results", "vs_referencenet_cpu.json"))
    p.add_argument("--child", choices=("torch", "humandiff", "humandiff_flops", "humandiff_compile"),
                   help=argparse.SUPPRESS)
    p.add_argument("--child_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.child == "torch":  # imports no JAX: its peak RSS is torch's alone
            row = _torch_side(args.steps, args.warmup, args.torch_threads)
        else:
            from train_step import _override  # noqa: PLC0415  (benchmarks/train_step.py: --set KEY=VALUE)

            overrides = humandiff_overrides(dict(_override(s) for s in args.set))
            if args.child in ("humandiff", "humandiff_compile"):
                row = _humandiff_side(args.steps, args.warmup, overrides, args.key_block,
                                      compile_only=args.child == "humandiff_compile")
            else:
                row = _humandiff_flops(overrides, args.key_block)
        with open(args.child_out, "w", encoding="utf-8") as fh:
            json.dump(row, fh)
        return 0
    sides = {} if args.no_torch else {"torch": None}
    sides["humandiff"] = {"set": args.set, "key_block": args.key_block, "xla_flags": args.xla_flags,
                          "compilation_cache": args.compilation_cache, "compile_in_child": False}
    sides.update({f"humandiff:{name}": spec for name, spec in map(parse_variant, args.variant)})
    load_before = os.getloadavg()
    flops = {} if args.no_flops else {side: run_child(side, spec, args, "humandiff_flops")
                                      for side, spec in sides.items() if spec is not None}
    runs = {side: [] for side in sides}
    for _ in range(args.pairs):
        for side, spec in sides.items():
            runs[side].append(run_child(side, spec, args))
            row = runs[side][-1]
            compiled = f", compiled in {row['compile_s']:.1f} s" if "compile_s" in row else ""
            print(f"{side}: {row['median_step_s']:.3f} s/step, {row['peak_rss_mb']:.0f} MB{compiled}", file=sys.stderr)
    sys.path.insert(0, HERE)
    import results_io  # noqa: PLC0415 - benchmarks/ is on sys.path only from here on

    result = {"sizes": {"block_out_channels": BLOCKS, "heads": HEADS, "cross_attention_dim": CROSS_DIM,
                        "layers_per_block": LAYERS, "latent": [LATENT, LATENT, CHANNELS], "batch": BATCH,
                        "dtype": "float32"},
              "sides": sides, "cpus": args.cpus or "all", "torch_threads": args.torch_threads or "one per CPU allowed",
              "rounds": args.pairs, "steps": args.steps, "warmup": args.warmup, "load_avg_before": load_before,
              "runs": runs, "flops": flops, "machine": results_io.machine()}
    if "torch" in runs:
        result["params"] = check_params(runs)
        result["summary"] = summarise(runs, flops)
        print(json.dumps(result["summary"], indent=1), file=sys.stderr)
    results_io.merge_into(args.out, args.key, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
