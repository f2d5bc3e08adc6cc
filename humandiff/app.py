"""A local web demo: animate a reference image with a pose video, a keypoint file or a bundled synthetic dance.

    pip install -e ".[app]"
    python -m humandiff.app --checkpoint CKPT [--port 7860] [--host 127.0.0.1] [--out DIR]

CKPT is what `humandiff.sample` takes (a training workdir or an export folder); it is loaded once, at start-up.
Every request runs the sampler CLI's own library calls (`sample.model_inputs`, `sample.animate`,
`sample.write_outputs`): for the same inputs, settings and seed, the demo's video is the CLI's. The defaults of
steps, guidance and sampler are the model's own (`sample.resolve_settings`, as the CLI's). Each request writes a
CLI-style output folder under --out (default: a temporary folder). Bad input shows the CLI's one-line message,
never a traceback. The bundled dances are generated at start-up by `humandiff.data.synthetic` (nothing is
downloaded); their first frames are offered as example references.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from humandiff import cli, media, sample

DANCE_FRAMES = 16  # frames of each bundled dance
DANCE_SEEDS = (1, 2)  # motion seeds of the bundled dances (held-out identities of the synthetic test split)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m humandiff.app", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True,
                   help="humandiff.train workdir (its latest checkpoint, EMA weights when kept) or export folder")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--out", default=None, help="folder for each request's outputs (default: a temporary folder)")
    p.add_argument("--pose-encoder", default=None, help="pose-encoder safetensors (export folders; as in sample)")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickle weight files (.bin/.ckpt)")
    return p.parse_args(argv)


def defaults(loaded) -> dict:
    """The model's own sampler settings (`sample.resolve_settings`, as the CLI uses them).

    Returns:
      `{"sampler", "steps", "guidance", "resolution"}`; resolution None when the model records none.
    """
    s = sample.resolve_settings(loaded)
    res = s["resolution"]["value"]
    return {"sampler": s["sampler"]["value"], "steps": int(s["steps"]["value"]),
            "guidance": float(s["guidance"]["value"]), "resolution": None if res is None else tuple(res)}


def make_dances(folder: str, resolution: tuple[int, int]) -> dict[str, dict]:
    """Synthetic dances for the demo (`humandiff.data.synthetic`), written under `folder`.

    Returns:
      name -> `{"keypoints": .npy path [T, 133, 3] in pixels of `resolution`, "reference": its first frame (png)}`.
    """
    from humandiff.data import synthetic  # noqa: PLC0415

    h, w = max(16, resolution[0]), max(16, resolution[1])
    os.makedirs(folder, exist_ok=True)
    dances = {}
    for i, seed in enumerate(DANCE_SEEDS):
        video = synthetic.make_video(seed, DANCE_FRAMES, h, w, identity=2 * seed + 1)
        name = f"synthetic dance {i + 1} ({DANCE_FRAMES} frames)"
        paths = {"keypoints": os.path.join(folder, f"dance{i + 1}.npy"),
                 "reference": os.path.join(folder, f"dance{i + 1}_reference.png"), "size": f"{h}x{w}"}
        media.save_keypoints(paths["keypoints"], video["keypoints"])
        media.write_image(paths["reference"], video["frames"][0])
        dances[name] = paths
    return dances


def sample_args(checkpoint: str, reference: str, poses: str, out: str, *, ref_pose: str | None = None,
                size: str | None = None, keypoints_size: str | None = None,
                max_frames: int | None = None) -> argparse.Namespace:
    """The sampler CLI's own arguments (`sample.parse_args`, every other flag at its default) for one request."""
    argv = ["--checkpoint", checkpoint, "--reference", reference, "--poses", poses, "--out", out]
    for flag, value in (("--ref-pose", ref_pose), ("--size", size), ("--keypoints-size", keypoints_size),
                        ("--max-frames", max_frames)):
        if value:
            argv += [flag, str(value)]
    return sample.parse_args(argv)


def generate(loaded, args: argparse.Namespace, *, steps: int, guidance: float, sampler: str, seed: int,
             on_step: Callable[[int], None] | None = None) -> tuple[dict, dict]:
    """One request: the CLI's `model_inputs` -> `animate` -> `write_outputs`; returns `(paths, metadata)`.

    Raises:
      The CLI's expected errors (`cli.EXPECTED`) for input a person can fix.
    """
    inputs, images, _, _ = sample.model_inputs(loaded, args)
    frames, metadata = sample.animate(loaded, inputs, images["reference"], steps=steps, guidance=guidance,
                                      sampler=sampler, seed=seed, eta=args.eta, window=args.window,
                                      overlap=args.overlap, ref_timestep=args.ref_timestep, on_step=on_step)
    metadata = {"checkpoint": args.checkpoint, "reference": args.reference, "poses": args.poses,
                "fps": images["fps"], "app": True, **metadata}
    return sample.write_outputs(args.out, frames, images, metadata), metadata


def build(loaded, checkpoint: str, out_root: str, dances: dict[str, dict]):
    """The Gradio app (not launched)."""
    import gradio as gr  # noqa: PLC0415  (optional extra: `pip install -e ".[app]"`)

    own = defaults(loaded)

    def run(reference, poses, dance, ref_pose, steps, guidance, sampler, seed, max_frames, size,
            progress=gr.Progress()):
        if not reference:
            raise gr.Error("upload a reference image (png/jpg), or pick an example reference")
        keypoints_size = None
        if not poses:
            if dance not in dances:
                raise gr.Error("upload a pose video or keypoint file, or pick a bundled dance")
            poses, keypoints_size = dances[dance]["keypoints"], dances[dance]["size"]
        steps = int(steps)
        out = tempfile.mkdtemp(prefix="run-", dir=out_root)
        try:
            args = sample_args(checkpoint, reference, poses, out, ref_pose=ref_pose, size=(size or "").strip(),
                               keypoints_size=keypoints_size, max_frames=int(max_frames or 0))
            progress((0, steps), desc="compiling and sampling", unit="steps")
            # The sampler calls on_step from an XLA thread: run it in this request's context, where
            # gr.Progress finds the request it reports to.
            context = contextvars.copy_context()
            paths, metadata = generate(
                loaded, args, steps=steps, guidance=float(guidance), sampler=sampler, seed=int(seed),
                on_step=lambda i: context.run(progress, (int(i) + 1, steps), desc="sampling"))
        except cli.EXPECTED as e:
            if not os.listdir(out):  # this request's own, still empty folder
                os.rmdir(out)
            raise gr.Error(cli.message(e)) from None
        files = [paths[k] for k in ("mp4", "gif", "grid", "metadata")]
        sec = metadata["seconds"]
        status = (f"{metadata['num_frames']} frame(s): compiled in {sec['compile']:.1f} s, sampled in "
                  f"{sec['sample']:.1f} s; written to {out}")
        return paths["mp4"], paths["grid"], files, status

    with gr.Blocks(title="humandiff: SCD demo", analytics_enabled=False) as demo:
        gr.Markdown(f"### SCD: animate a reference image with poses\nmodel: `{checkpoint}`")
        with gr.Row():
            with gr.Column():
                reference = gr.Image(type="filepath", image_mode=None, label="reference image", elem_id="reference")
                gr.Examples([[d["reference"]] for d in dances.values()], inputs=[reference],
                            label="example references (synthetic figures)")
                poses = gr.File(label="pose video or keypoints (.mp4 .gif .npy .json); empty: the dance below",
                                file_types=[".mp4", ".gif", ".webm", ".mov", ".avi", ".npy", ".json"],
                                elem_id="poses")
                dance = gr.Dropdown(list(dances), value=next(iter(dances), None), label="bundled dance",
                                    elem_id="dance")
                ref_pose = gr.File(label="reference pose (optional: pose image or keypoints)",
                                   file_types=["image", ".npy", ".json"], elem_id="ref_pose")
            with gr.Column():
                steps = gr.Slider(1, 100, value=own["steps"], step=1, label="steps", elem_id="steps")
                guidance = gr.Slider(1.0, 10.0, value=own["guidance"], step=0.05, label="guidance",
                                     elem_id="guidance")
                sampler = gr.Dropdown(list(sample.SAMPLERS), value=own["sampler"], label="sampler", elem_id="sampler")
                seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                max_frames = gr.Number(0, precision=0, label="max frames (0: all)", elem_id="max_frames")
                size = gr.Textbox("", label="size HxW (empty: the model's, else the reference's size)", elem_id="size")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            video = gr.Video(label="result", elem_id="result", autoplay=True, loop=True)
            grid = gr.Video(label="reference | pose | result", elem_id="grid", autoplay=True, loop=True)
        files = gr.File(label="downloads", file_count="multiple", elem_id="files")
        status = gr.Markdown(elem_id="status")
        button.click(run, [reference, poses, dance, ref_pose, steps, guidance, sampler, seed, max_frames, size],
                     [video, grid, files, status])
    demo.queue(default_concurrency_limit=1)  # one sampling at a time: the model is on one device
    return demo


def launch(demo, host: str, port: int, out_root: str, **kwargs):
    """Serves `demo` on host:port (blocking unless `prevent_thread_lock=True`); system fonts, nothing fetched."""
    import gradio as gr  # noqa: PLC0415

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    return demo.launch(server_name=host, server_port=port, allowed_paths=[out_root], theme=theme, footer_links=[],
                       **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: load the model once, build the dances, serve until interrupted."""
    args = parse_args(argv)
    with cli.errors(args.debug):
        try:
            import gradio  # noqa: F401, PLC0415
        except ModuleNotFoundError:
            raise ValueError('the web demo needs gradio: pip install -e ".[app]"') from None
        if not os.path.exists(args.checkpoint):
            raise FileNotFoundError(f"checkpoint folder not found: {args.checkpoint}")
        out_root = args.out or tempfile.mkdtemp(prefix="humandiff-app-")
        os.makedirs(out_root, exist_ok=True)
        print(f"loading {args.checkpoint} ...", file=sys.stderr, flush=True)
        loaded = sample.load(args.checkpoint, pose_encoder=args.pose_encoder, allow_pickle=args.allow_pickle)
        dances = make_dances(os.path.join(out_root, "dances"), defaults(loaded)["resolution"] or (64, 64))
        demo = build(loaded, args.checkpoint, out_root, dances)
        print(f"outputs go to {out_root}", file=sys.stderr, flush=True)
        launch(demo, args.host, args.port, out_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
