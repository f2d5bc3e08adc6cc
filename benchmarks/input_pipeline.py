"""Input-pipeline throughput per CPU core: image stage (512x512) and video stage (24 x 512x512 clips).

  PYTHONPATH=. python benchmarks/input_pipeline.py [--out benchmarks/results/input_pipeline_cpu.json]

Builds a small synthetic dataset with `data_pipelines.build` (512x512 JPEG frames), then runs the grain
loader in one process with ONE decoding thread and measures samples per second of wall time and per
CPU-second of this process (the second is the per-core figure; it does not depend on other load on a
shared machine). From that and an explicitly ASSUMED accelerator step rate it states how many cores a
host needs to keep the train step fed. Also times the parts of one example (decode+crop, pose render,
CLIP preprocessing) outside grain, and the image stage on photo-like 940x720 frames (UBC-Fashion size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

# ASSUMPTIONS (not measurements) used to turn samples/s/core into cores per host. SD-1.5 UNet forward at
# 512x512 (64x64 latent) is ~0.8 TFLOP per image; an SCD training sample runs the UNet on the reference
# and the target, forward + backward (x3), plus VAE encodes: ~5 TFLOP per image-stage sample. A TPU v5p
# chip peaks at 459 bf16 TFLOP/s; at an assumed 40% MFU that is ~37 samples/s/chip, i.e. a batch of 4
# per chip every ~0.11 s. A v5p host drives 4 chips. The video stage (24 frames + reference, only the
# temporal layers trained) is assumed ~12x the FLOPs of an image sample.
ASSUMED = {
    "tflop_per_image_sample": 5.0,
    "chip_peak_tflops": 459.0,
    "mfu": 0.40,
    "chips_per_host": 4,
    "video_sample_cost_in_image_samples": 12.0,
}


def machine() -> dict:
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    import PIL

    return {"note_frames": "synthetic figures on flat backgrounds make small JPEGs (build.jpeg_kb_per_frame); "
                           "the photo-like 940x720 case measures decoding at real-footage sizes",
            "cpu": cpu, "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "pillow": PIL.__version__,
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "note": "shared machine (other jobs running); per-CPU-second rates are the robust figure"}


def _time_iterator(it, num_batches: int, batch: int) -> dict:
    next(it)  # warm-up: thread start, first reads
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        next(it)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    it.close()  # stop its prefetch threads before the next measurement
    n = num_batches * batch
    return {"samples": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "samples_per_s_wall_1thread": round(n / wall, 2), "samples_per_cpu_s": round(n / cpu, 2)}


def _textured_videos(num_videos: int = 2, num_frames: int = 32, height: int = 940, width: int = 720) -> list:
    """In-memory videos with photo-like JPEG frames (UBC-Fashion size): smooth colour fields plus grain,
    ~10x the bytes of a synthetic frame, so decoding costs what real footage costs."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    videos = []
    for v in range(num_videos):
        low = rng.integers(0, 255, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(low).resize((width + 80, height + 80), Image.BICUBIC), np.int16)
        jpegs = []
        for t in range(num_frames):
            frame = base[t % 40: t % 40 + height, t % 40: t % 40 + width] + rng.normal(0, 8, (height, width, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
            jpegs.append(buf.getvalue())
        xy = rng.uniform([0, 0], [width, height], (num_frames, 133, 2))
        kp = np.concatenate([xy, np.ones((num_frames, 133, 1))], -1).astype(np.float32)
        videos.append({"video_id": f"textured{v}", "frames_jpeg": jpegs, "keypoints": kp, "fps": 30.0})
    return videos


def _parts(records, options) -> dict:
    """Median CPU milliseconds (this thread) of the parts of one example, outside grain."""
    from humandiff.data import examples, pose_render, transforms

    rng = np.random.default_rng(0)
    times = {"decode_crop_resize_ms": [], "render_pose_ms": [], "clip_preprocess_ms": []}
    for i in range(24):
        rec = records[i % len(records)]
        t0 = time.thread_time()
        img = transforms.open_frame(rec["frames_jpeg"][i])
        g = transforms.sample_geometry(rng, img.size[1], img.size[0], options.height, options.width, (0.8, 1.0), 0.5)
        out = transforms.apply_geometry(img, g)
        transforms.to_signed_float(out)
        t1 = time.thread_time()
        pose_render.render_pose(transforms.transform_keypoints(rec["keypoints"][i], g), options.height, options.width)
        t2 = time.thread_time()
        transforms.clip_preprocess(out)
        t3 = time.thread_time()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[k].append(v * 1e3)
    del examples
    return {k: round(float(np.median(v)), 2) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/input_pipeline_cpu.json")
    parser.add_argument("--num_videos", type=int, default=3)
    parser.add_argument("--frames_per_video", type=int, default=48)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()

    from data_pipelines import build
    from humandiff.data import loader, sources

    result = {"machine": machine(), "assumed": ASSUMED}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = build.build("synthetic", tmp, num_videos=args.num_videos, num_test_videos=0,
                          num_frames=args.frames_per_video, height=args.size, width=args.size)
        build_s = time.perf_counter() - t0
        n_frames = args.num_videos * args.frames_per_video
        src = sources.open_tfds(out, "train")
        jpeg_kb = np.mean([len(src[v]["frames_jpeg"][t]) for v in range(len(src)) for t in range(8)]) / 1024
        result["build"] = {"videos": args.num_videos, "frames": n_frames, "size": args.size,
                           "wall_s": round(build_s, 2), "frames_per_s": round(n_frames / build_s, 1),
                           "jpeg_kb_per_frame": round(float(jpeg_kb), 1)}
        c = loader.default_config()
        c.update(source="tfds", data_dir=out, resolution=(512, 512), crop_scale=(0.8, 1.0), num_threads=1,
                 prefetch=2, min_margin=8, drop_prob=0.1)
        c.update(stage="image", batch_size=4)
        result["image_stage_512"] = _time_iterator(
            loader.make_train_iterator(c, seed=0, process_index=0, process_count=1), 10, 4)
        records = [src[i] for i in range(len(src))]
        result["image_stage_512"]["parts_cpu_ms"] = _parts(records, loader.example_options(c))
        c.update(stage="video", batch_size=1, num_frames=24, stride=2)
        result["video_stage_24x512"] = _time_iterator(
            loader.make_train_iterator(c, seed=0, process_index=0, process_count=1), 8, 1)

    # The same image stage on photo-like 940x720 frames (in memory: decode/transform cost, no ArrayRecord).
    textured = _textured_videos()
    c.update(stage="image", batch_size=4)
    result["image_stage_512_from_940x720_photo_like"] = _time_iterator(
        loader.make_train_iterator(c, seed=0, process_index=0, process_count=1, source=textured), 10, 4)
    result["image_stage_512_from_940x720_photo_like"]["jpeg_kb_per_frame"] = round(
        float(np.mean([len(j) for v in textured for j in v["frames_jpeg"]])) / 1024, 1)
    result["image_stage_512_from_940x720_photo_like"]["parts_cpu_ms"] = _parts(textured, loader.example_options(c))

    per_chip = ASSUMED["chip_peak_tflops"] * ASSUMED["mfu"] / ASSUMED["tflop_per_image_sample"]
    need_image = per_chip * ASSUMED["chips_per_host"]
    need_video = need_image / ASSUMED["video_sample_cost_in_image_samples"]
    result["cores_per_host_to_feed_step"] = {
        "assumed_image_samples_per_s_per_host": round(need_image, 1),
        "assumed_image_step_time_s_batch4_per_chip": round(4 / per_chip, 3),
        "image_stage_cores": round(need_image / result["image_stage_512"]["samples_per_cpu_s"], 1),
        "image_stage_cores_photo_like_940x720": round(
            need_image / result["image_stage_512_from_940x720_photo_like"]["samples_per_cpu_s"], 1),
        "assumed_video_samples_per_s_per_host": round(need_video, 2),
        "video_stage_cores": round(need_video / result["video_stage_24x512"]["samples_per_cpu_s"], 1),
        "caveat": "cores = assumed host demand / measured samples per CPU-second; the demand is an "
                  "assumption (FLOP estimate at 40% MFU), not a measured step time",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
