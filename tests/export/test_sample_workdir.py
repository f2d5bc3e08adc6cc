"""`python -m humandiff.sample --checkpoint WORKDIR`: the trained parameters read directly (no export on the fly),
the frames equal a direct library call with the same inputs, settings and seed, and only results are written."""

import json
import os

import numpy as np
from PIL import Image

from .conftest import require_parts

require_parts()

import jax  # noqa: E402

from humandiff import sample  # noqa: E402
from humandiff.diffusion import pipeline, samplers  # noqa: E402
from humandiff.training import step  # noqa: E402

SIZE = 16


def _tree(root):
    """Every file under `root` with its size and modification time."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = (os.path.getsize(path), os.path.getmtime(path))
    return out


def _inputs(root):
    rng = np.random.default_rng(4)
    ref = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(ref).save(root / "ref.png")
    ref_pose = np.zeros((SIZE, SIZE, 3), np.uint8)
    ref_pose[3:9, 5:11] = (0, 255, 85)
    Image.fromarray(ref_pose).save(root / "ref_pose.png")
    (root / "poses").mkdir()
    poses = []
    for i in range(2):
        frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        frame[2 + 4 * i: 7 + 4 * i, 4:12] = (255, 0, 85)
        Image.fromarray(frame).save(root / "poses" / f"{i:03d}.png")
        poses.append(frame)
    # The model's inputs as the method defines them: reference in [-1, 1], pose images in [0, 1].
    return {"ref_image": (ref.astype(np.float32) / 127.5 - 1.0)[None],
            "ref_pose": (ref_pose.astype(np.float32) / 255.0)[None],
            "poses": (np.stack(poses).astype(np.float32) / 255.0)[None]}


def test_sample_cli_on_a_workdir_equals_the_library_and_writes_only_results(tiny_ckpt, tmp_path):
    workdir, config, models, _, ema = tiny_ckpt
    inputs = _inputs(tmp_path)
    before = _tree(workdir)
    out = tmp_path / "out"
    rc = sample.main(["--checkpoint", workdir, "--reference", str(tmp_path / "ref.png"), "--poses",
                      str(tmp_path / "poses"), "--ref-pose", str(tmp_path / "ref_pose.png"), "--out", str(out),
                      "--steps", "3", "--guidance", "2.5", "--seed", "7", "--sampler", "dpmsolver++"])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["frames", "grid.mp4", "metadata.json", "result.gif", "result.mp4"]
    assert _tree(workdir) == before  # nothing written into the run
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["sources"] == {"workdir": workdir, "step": 8, "ema": True}

    cfg = pipeline.SamplingConfig(ref_timestep=config.diffusion.ref_timestep, use_ref_pose=config.model.use_ref_pose)
    sampler = samplers.make_sampler(step.make_schedule(config).config, "dpmsolver++", 3,
                                    spacing=config.sample.timestep_spacing)
    frames = np.asarray(pipeline.make_generator(models, cfg)(ema, sampler, inputs, jax.random.key(7), 2.5))[0]
    want = np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)
    got = np.stack([np.asarray(Image.open(out / "frames" / f"frame_{i:04d}.png")) for i in range(2)])
    assert want.std() > 0
    np.testing.assert_array_equal(got, want)  # the same program on the same inputs: bit-identical frames
