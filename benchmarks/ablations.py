"""The paper's ablations in miniature: the demo trained once per arm and seed, scored by the trainer's evaluations.

    PYTHONPATH=. python benchmarks/ablations.py --root runs/ablations                 # the whole grid, 3 seeds
    PYTHONPATH=. python benchmarks/ablations.py --root runs/ablations --arms separate --seeds 0,1,2
    PYTHONPATH=. python benchmarks/ablations.py --root runs/ablations --report        # table and plot only
    PYTHONPATH=. python benchmarks/ablations.py --root runs/ablations_reframed --data reframed

Arms (all `configs/demo.py`, synthetic figures, pixel space, the same step budget):

- `causal_refpose`: SCD as shipped (causal interaction, reference pose injected into the reference pass);
- `causal_noref`: causal, no reference pose;
- `full_refpose`, `full_noref`: full interaction (the reference also sees the target; trained in the joint form);
- `separate`: causal with reference pose, but the reference pass runs its own copy of the UNet
  (`model.reference_net="separate"`, the ReferenceNet of Animate Anyone inside the same code).

Data (`--data`): `same_framing`, the synthetic set as shipped (the reference is a frame of the target's video,
cropped as the target); `reframed`, the reference cropped on its own (`data.reference_crop_scale=(0.7, 0.9)`: another
camera distance and offset than the target's, in training and in the held-out evaluation), so that no pixel of the
reference sits where the target's does and it must be read by content.

Each run is one `python -m humandiff.train` process (its command is stored with its row); its wall time and peak
RSS come from `os.wait4`. A finished run is not trained again: its record (`<workdir>/ablation_run.json`) is reused.
Scores are the trainer's own evaluations: the held-out samples at the end (`evals/heldout`: 16 test identities x 8
frames, fixed noise; PSNR, SSIM, L1) and the held-out loss (`evals/loss`, fixed batches and draws) every `--every`
steps (sampling 128 frames twice costs ~40 s here, the loss ~4 s). Per arm: the mean over seeds of each seed's mean over
identities, its standard error over seeds, and the standard error over all seed x identity values. Differences to
`causal_refpose` are flagged when larger than 2 standard errors (over seeds, unpaired). Writes
`benchmarks/results/ablations_cpu.json`, prints a Markdown table, and draws the held-out loss against step
(`--plot`).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import results_io  # benchmarks/results_io.py: a script's own folder is on sys.path

DEMO = "configs/demo.py"
ARMS = {  # name -> (config argument, extra overrides)
    "causal_refpose": (DEMO, ()),
    "causal_noref": (DEMO + ":use_ref_pose=false", ()),
    "full_refpose": (DEMO + ":interaction=full", ()),
    "full_noref": (DEMO + ":interaction=full,use_ref_pose=false", ()),
    "separate": (DEMO, ("--config.model.reference_net=separate",)),
}
DATA = {  # name -> overrides of the data config
    "same_framing": (),
    "reframed": ("--config.data.reference_crop_scale=(0.7,0.9)",),
}
BASELINE = "causal_refpose"
METRICS = ("psnr_scd", "ssim_scd", "l1_scd", "loss", "psnr_no_ref", "psnr_copy_ref")


def command(arm: str, seed: int, workdir: str, steps: int, every: int, data: str = "same_framing") -> list[str]:
    """The `humandiff.train` command line of one run."""
    config, extra = ARMS[arm]
    return ["python", "-m", "humandiff.train", f"--config={config}", f"--workdir={workdir}", f"--config.seed={seed}",
            f"--config.total_steps={steps}", f"--config.optim.decay_steps={steps // 3}",
            "--config.evals.heldout.every=0", f"--config.evals.loss.every={every}", *extra, *DATA[data]]


def train(arm: str, seed: int, root: str, steps: int, every: int, data: str = "same_framing") -> dict:
    """Trains one run (or reads the record of a finished one): command, wall seconds, peak RSS."""
    workdir = os.path.join(root, arm, f"seed{seed}")
    record_path = os.path.join(workdir, "ablation_run.json")
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as fh:
            return json.load(fh)
    argv = command(arm, seed, workdir, steps, every, data)
    print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: {shlex.join(argv)}", flush=True)
    log_path = workdir + ".log"  # beside the workdir: the trainer owns the workdir
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, *argv[1:]], stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            tail = fh.read()[-3000:]
        raise SystemExit(f"error: {arm} seed {seed} failed (exit {code}), log {log_path}:\n{tail}")
    record = {"arm": arm, "seed": seed, "command": shlex.join(argv), "wall_s": round(time.perf_counter() - t0, 1),
              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "steps": steps, "data": data}
    with open(record_path, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
    return record


def scores(workdir: str) -> dict[int, dict]:
    """`{step: {metric: value, "per_video": {...}}}` from a run's `evals/heldout` and `evals/loss` files."""
    out: dict[int, dict] = {}
    for name in ("heldout", "loss"):
        for path in sorted(glob.glob(os.path.join(workdir, "evals", name, "step_*.json"))):
            with open(path, encoding="utf-8") as fh:
                rec = json.load(fh)
            out.setdefault(int(rec["step"]), {}).update({k: v for k, v in rec.items() if k in METRICS + ("per_video",)})
    return out


def param_count(workdir: str) -> int:
    """Parameters of the run's model (all trained here), from its config.json."""
    import jax
    import ml_collections

    from humandiff.training import modeling

    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as fh:
        config = ml_collections.ConfigDict(json.load(fh))
    models, _ = modeling.build(config)
    shapes = jax.eval_shape(lambda: modeling.init_params(models, config, jax.random.key(0)))
    return modeling.count_params(shapes)


def summarize(runs: list[dict]) -> dict:
    """Per arm and step: mean over seeds, SE over seeds, SE over seed x identity values; costs per arm."""
    arms: dict[str, dict] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        steps = sorted(set.intersection(*(set(r["scores"]) for r in mine)))
        curve = {}
        for step in steps:
            row = {}
            for m in METRICS:
                per_seed = [r["scores"][step].get(m) for r in mine]
                if any(v is None for v in per_seed):
                    continue
                per_seed = np.asarray(per_seed, np.float64)
                row[m] = {"mean": float(per_seed.mean()), "se": _se(per_seed), "per_seed": per_seed.tolist()}
                pooled = [v for r in mine for v in r["scores"][step].get("per_video", {}).get(m, [])]
                if pooled:
                    row[m]["se_seed_identity"] = _se(np.asarray(pooled))
            curve[step] = row
        arms[arm] = {"seeds": [r["seed"] for r in mine], "curve": curve,
                     "wall_s": _stat([r["wall_s"] for r in mine]),
                     "peak_rss_mb": _stat([r["peak_rss_mb"] for r in mine]),
                     "params": mine[0]["params"], "command": mine[0]["command"]}
    if BASELINE in arms:
        base = arms[BASELINE]
        for arm, a in arms.items():
            final = max(a["curve"])
            a["vs_" + BASELINE] = {}
            for m, v in a["curve"][final].items():
                b = base["curve"][max(base["curve"])].get(m)
                if b is None or arm == BASELINE:
                    continue
                diff, se = v["mean"] - b["mean"], float(np.hypot(v["se"], b["se"]))
                a["vs_" + BASELINE][m] = {"diff": diff, "se": se, "beyond_2se": bool(abs(diff) > 2 * se)}
    return arms


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def _stat(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def table(arms: dict) -> str:
    """Markdown: final-step metrics (mean +- SE over seeds), the difference to the baseline, and the costs."""
    lines = ["| arm | held-out PSNR (dB) | SSIM | L1 | held-out loss | PSNR vs causal_refpose | PSNR without the "
             "reference / copying it | params | s / run | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, a in arms.items():
        final = a["curve"][max(a["curve"])]
        cell = lambda m, f: (f"{final[m]['mean']:{f}} ± {final[m]['se']:{f}}" if m in final else "-")  # noqa: E731
        vs = a.get("vs_" + BASELINE, {}).get("psnr_scd")
        diff = "-" if vs is None else f"{vs['diff']:+.2f} ± {vs['se']:.2f}{' (> 2 SE)' if vs['beyond_2se'] else ''}"
        lines.append(f"| {arm} | {cell('psnr_scd', '.2f')} | {cell('ssim_scd', '.3f')} | {cell('l1_scd', '.4f')} | "
                     f"{cell('loss', '.4f')} | {diff} | {cell('psnr_no_ref', '.2f')} / {cell('psnr_copy_ref', '.2f')} | "
                     f"{a['params']:,} | {a['wall_s']['mean']:.0f} | "
                     f"{a['peak_rss_mb']['mean']:.0f} |")
    return "\n".join(lines)


def plot(arms: dict, path: str, metric: str = "loss") -> None:
    """`metric` (mean over seeds, +- SE bars) against step, one line per arm, drawn with PIL (a small PNG)."""
    from PIL import Image, ImageDraw

    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    width, height, left, right, top, bottom = 640, 360, 56, 150, 16, 40
    pts = [(s, r[metric]) for a in arms.values() for s, r in a["curve"].items() if metric in r]
    smax = max(s for s, _ in pts)
    lo = min(v["mean"] - v["se"] for _, v in pts)
    hi = max(v["mean"] + v["se"] for _, v in pts)
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    x = lambda s: left + (width - left - right) * s / smax  # noqa: E731
    y = lambda v: top + (height - top - bottom) * (hi - v) / (hi - lo)  # noqa: E731
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([left, top, width - right, height - bottom], outline="black")
    for tick in np.linspace(lo, hi, 6)[1:-1]:
        d.line([left - 4, y(tick), left, y(tick)], fill="black")
        d.text((4, y(tick) - 6), f"{tick:.4g}", fill="black")
    d.text((4, 2), metric, fill="black")
    for s in sorted({s for s, _ in pts}):
        d.text((x(s) - 12, height - bottom + 6), str(s), fill="black")
    d.text((left + (width - left - right) // 2 - 30, height - 16), "training step", fill="black")
    for i, (arm, a) in enumerate(arms.items()):
        c = colors[i % len(colors)]
        line = [(x(s), y(r[metric]["mean"])) for s, r in sorted(a["curve"].items()) if metric in r]
        d.line(line, fill=c, width=2)
        for (px, _), (s, r) in zip(line, sorted(a["curve"].items())):
            m, se = r[metric]["mean"], r[metric]["se"]
            d.line([px, y(m - se), px, y(m + se)], fill=c, width=1)
        d.line([width - right + 10, top + 14 + 18 * i, width - right + 30, top + 14 + 18 * i], fill=c, width=3)
        d.text((width - right + 36, top + 8 + 18 * i), arm, fill="black")
    img.save(path, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/ablations", help="folder of the runs (<root>/<arm>/seed<k>)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps per run")
    p.add_argument("--every", type=int, default=100, help="steps between held-out loss evaluations")
    p.add_argument("--data", default="same_framing", choices=tuple(DATA), help="the synthetic set's variant")
    p.add_argument("--report", action="store_true", help="only summarize finished runs")
    p.add_argument("--out", default="benchmarks/results/ablations_cpu.json")
    p.add_argument("--plot", default="", help="PNG of the held-out loss against step (e.g. docs/ablations.png)")
    args = p.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"error: unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    runs = []
    for arm in arms:
        for seed in (int(s) for s in args.seeds.split(",")):
            workdir = os.path.join(args.root, arm, f"seed{seed}")
            if args.report and not os.path.isfile(os.path.join(workdir, "ablation_run.json")):
                continue
            record = train(arm, seed, args.root, args.steps, args.every, args.data)
            if record.get("data", "same_framing") != args.data:
                raise SystemExit(f"error: {workdir} was trained on data {record.get('data', 'same_framing')!r}, "
                                 f"not {args.data!r}; use another --root")
            record["scores"] = scores(workdir)
            record["params"] = param_count(workdir)
            runs.append(record)
    if not runs:
        raise SystemExit(f"error: no finished runs under {args.root}")
    arms_summary = summarize(runs)
    key = f"steps{args.steps}" if args.data == "same_framing" else f"{args.data}_steps{args.steps}"
    results_io.merge_into(args.out, key, {"machine": results_io.machine(), "arms": arms_summary})
    print(table(arms_summary))
    if args.plot:
        plot(arms_summary, args.plot)


if __name__ == "__main__":
    main()
