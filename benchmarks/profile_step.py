r"""Where the time of humandiff's train step goes on XLA:CPU: per-op profile by category, FLOP rates, memory.

    PYTHONPATH=. python benchmarks/profile_step.py --steps 2 --out benchmarks/results/profile_step_cpu.json

Builds the step of `benchmarks/vs_referencenet.py` (same sizes, same `--set` overrides), runs `--warmup` steps, then
traces `--steps` steps with `jax.profiler.trace` (perfetto JSON). Each traced XLA:CPU thunk is matched to its HLO
instruction in the compiled module's text; instructions are put in categories (convolutions split into forward,
input-gradient and kernel-gradient by their JAX op names; dots; copies/transposes; reductions; other fusions), and
convolution / dot FLOPs are counted from the HLO shapes, so each category gets seconds per step and GFLOP/s.
Also written: XLA's memory analysis of the step and this process's resident set (peak so far, and now) before
building, after building (compiling + allocating the state) and after the warm-up steps, to read the gap between
XLA's count and the RSS.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(?[a-z0-9]+\[[^=]*?\]\S*|\([^=]*?\)) ([\w\-]+)\((.*)$")
_COMP = re.compile(r"^%?([\w.\-]+) \(.*\{\s*$|^ENTRY %?([\w.\-]+) ")
_SHAPE = re.compile(r"[a-z0-9]+\[([0-9,]*)\]")


def _dims(shape_text: str) -> list[int]:
    m = _SHAPE.search(shape_text)
    return [int(x) for x in m.group(1).split(",") if x] if m else []


def parse_hlo(text: str) -> dict:
    """Instruction name -> {op, comp, shape, calls, flops, jax_op} for every instruction of the module."""
    out, comp, shapes = {}, None, {}
    for line in text.splitlines():
        m = _COMP.match(line)
        if m:
            comp, shapes = m.group(1) or m.group(2), {}
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        shapes[name] = shape
        calls = re.findall(r"(?:calls|body|condition|to_apply)=%?([\w.\-]+)", rest)
        jax_op = re.search(r'op_name="([^"]*)"', rest)
        flops = 0.0
        operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
        if op == "convolution" and len(operands) >= 2:
            size = re.search(r"window=\{size=([0-9x]+)", rest)
            window = math.prod(int(x) for x in size.group(1).split("x")) if size else 1
            labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
            rhs = _dims(shapes.get(operands[1], ""))
            cin = rhs[labels.group(1).index("i")] if labels and rhs else 0
            flops = 2.0 * math.prod(_dims(shape)) * window * cin
        elif op == "dot" and len(operands) >= 2:
            contract = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", rest)
            lhs = _dims(shapes.get(operands[0], ""))
            k = math.prod(lhs[int(i)] for i in contract.group(1).split(",") if i) if contract and lhs else 0
            flops = 2.0 * math.prod(_dims(shape)) * k
        out[name] = {"op": op, "comp": comp, "shape": shape.split("{")[0], "calls": calls, "flops": flops,
                     "jax_op": jax_op.group(1) if jax_op else ""}
    return out


def by_computation(hlo: dict) -> dict:
    """Computation name -> its instructions."""
    comps = collections.defaultdict(list)
    for ins in hlo.values():
        comps[ins["comp"]].append(ins)
    return comps


def classify(hlo: dict, comps: dict, name: str) -> tuple[str, float]:
    """(category, FLOPs) of one top-level instruction, looking inside the computation a fusion calls."""
    ins = hlo[name]
    inner = [ins] if ins["op"] != "fusion" else [i for c in ins["calls"] for i in comps.get(c, [])]
    ops = {i["op"] for i in inner}
    flops = sum(i["flops"] for i in inner)
    if "convolution" in ops:
        conv = next(i for i in inner if i["op"] == "convolution")
        shape = _dims(conv["shape"])
        kernel_grad = len(shape) == 4 and shape[1] * shape[2] <= 9 and "transpose" in conv["jax_op"] + ins["jax_op"]
        kind = "kernel_grad" if kernel_grad or not conv["jax_op"] else (
            "input_grad" if "transpose(" in conv["jax_op"] else "forward")
        return f"convolution_{kind}", flops
    if "dot" in ops:
        return "dot", flops
    if ops <= {"transpose", "copy", "parameter", "bitcast", "reshape", "broadcast", "slice", "concatenate", "pad",
               "dynamic-slice", "dynamic-update-slice", "reverse"}:
        return "copy_transpose_slice", 0.0
    if "reduce" in ops or "reduce-window" in ops:
        return "fusion_with_reduce", 0.0
    if ins["op"] in ("while", "call", "conditional"):
        return "control", 0.0
    return "elementwise_fusion", 0.0


PARTS = (("self_attention", "/attn1/"), ("cross_attention", "/attn2/"), ("feed_forward", "/ff/"),
         ("resnets", "/resnets_"), ("transformer_proj_norm", "/attentions_"), ("pose_encoder", "PoseEncoder"))


def part_of(jax_op: str) -> str:
    """The model part an op's JAX name places it in: the first match of PARTS, else "model_other" inside the loss's
    forward/backward (`jvp(`, `transpose(`), else "optimizer_and_rest" (AdamW, clipping, the finite check)."""
    part = next((name for name, key in PARTS if key in jax_op), None)
    return part or ("model_other" if "jvp(" in jax_op else "optimizer_and_rest")


def trace_events(trace_dir: str) -> list[dict]:
    """The complete ('X') events of the newest perfetto trace under `trace_dir`."""
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def profile(hlo: dict, events: list[dict], steps: int, part=part_of) -> dict:
    """Seconds per step and GFLOP/s per category, and the 25 costliest instructions (`part`: JAX op name -> model
    part; the default is the train step's `part_of`)."""
    per_name, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e["name"] in hlo and hlo[e["name"]]["op"] not in ("while", "call", "conditional"):
            per_name[e["name"]] += e["dur"] * 1e-6 / steps  # perfetto durations are microseconds
            calls[e["name"]] += 1
    comps = by_computation(hlo)
    cats = collections.defaultdict(lambda: {"s": 0.0, "flops": 0.0, "count": 0})
    parts, part_flops = collections.Counter(), collections.Counter()
    top = []
    for name, s in per_name.items():
        cat, flops = classify(hlo, comps, name)
        # Instructions inside a while body (chunked attention) run once per trip: FLOPs per trip times trips.
        trips = calls[name] / steps
        cats[cat]["s"] += s
        cats[cat]["flops"] += flops * trips
        cats[cat]["count"] += 1
        parts[part(hlo[name]["jax_op"])] += s
        part_flops[part(hlo[name]["jax_op"])] += flops * trips
        top.append({"name": name, "category": cat, "s_per_step": s, "gflop": flops * trips / 1e9,
                    "shape": hlo[name]["shape"], "jax_op": hlo[name]["jax_op"][-120:]})
    total = sum(c["s"] for c in cats.values())
    for c in cats.values():
        c["fraction"] = c["s"] / total if total else 0.0
        c["gflop_per_s"] = c["flops"] / c["s"] / 1e9 if c["s"] and c["flops"] else None
    return {"categories": dict(sorted(cats.items(), key=lambda kv: -kv[1]["s"])), "traced_op_s_per_step": total,
            "parts_s_per_step": dict(parts.most_common()),
            "parts_gflop_per_step": {k: part_flops[k] / 1e9 for k, _ in parts.most_common()},
            "top": sorted(top, key=lambda r: -r["s_per_step"])[:25]}


def _rss_mb() -> float:
    """Peak resident set of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    """Resident set of this process now, MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2, help="traced steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="humandiff config override")
    p.add_argument("--key_block", type=int, default=None,
                   help="AttentionConfig.xla_key_block (0: off; default: the field's default)")
    p.add_argument("--key", default="default")
    p.add_argument("--hlo_out", default="", help="also write the compiled step's HLO text here")
    p.add_argument("--out", default=os.path.join(HERE, "results", "profile_step_cpu.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, HERE)
    import jax

    import results_io
    import train_step as bench
    import vs_referencenet as peer
    from humandiff import config_lib
    from humandiff.training import runtime

    peer.use_key_block(args.key_block)
    runtime.use_memory_scheduler_on_cpu()
    overrides = peer.humandiff_overrides(dict(peer._override(s) for s in args.set))
    config = config_lib.load(os.path.join(os.path.dirname(HERE), "configs", "demo.py"), overrides)
    runtime.use_cpu_devices(int(config.mesh.cpu_devices))
    config.mesh.shape = (-1, 1, 1)
    config_lib.validate(config, jax.device_count())
    rss = {"now_before_build": _current_rss_mb()}
    with tempfile.TemporaryDirectory() as workdir:
        f = bench.build(config, workdir, {"vae": peer._channel_pad()})
    rss.update(peak_after_build=_rss_mb(), now_after_build=_current_rss_mb())
    print(f"built (compile {f['compile_s']:.0f} s), RSS {rss['peak_after_build']:.0f} MB", file=sys.stderr)
    for _ in range(args.warmup):
        bench._step(f)
    rss.update(peak_after_warmup=_rss_mb(), now_after_warmup=_current_rss_mb())
    text = f["compiled"].as_text()
    if args.hlo_out:
        with open(args.hlo_out, "w", encoding="utf-8") as fh:
            fh.write(text)
    hlo = parse_hlo(text)
    print(f"warm-up done, RSS {rss['peak_after_warmup']:.0f} MB; {len(hlo)} HLO instructions", file=sys.stderr)
    with tempfile.TemporaryDirectory() as trace_dir:
        t0 = time.perf_counter()
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            times = [bench._step(f) for _ in range(args.steps)]
        traced_wall = time.perf_counter() - t0
        events = trace_events(trace_dir)
    result = {"overrides": args.set, "key_block": args.key_block, "step_s": times, "traced_wall_s": traced_wall,
              "compile_s": f["compile_s"],
              "flops_per_step": f["flops"], "xla_memory": bench._memory(f["compiled"]), "rss_mb": rss,
              "profile": profile(hlo, events, args.steps), "machine": results_io.machine()}
    results_io.merge_into(args.out, args.key, result)
    print(json.dumps({k: result[k] for k in ("step_s", "xla_memory", "rss_mb")}, indent=1))
    print(json.dumps(result["profile"]["categories"], indent=1))
    print(json.dumps(result["profile"]["parts_s_per_step"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
