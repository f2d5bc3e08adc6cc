"""`python -m humandiff.sample` samples with the settings the model records (its training config's sampler, steps,
guidance and resolution: what its held-out evaluation uses) unless a flag overrides them, says where each value came
from, and refuses a model trained with the reference pose when none is given."""

import json

import numpy as np
import pytest
from PIL import Image

from .conftest import require_parts

require_parts()

import jax  # noqa: E402

from humandiff import media, sample  # noqa: E402
from humandiff.checkpoints import loading  # noqa: E402
from humandiff.data.pose_input import load_poses  # noqa: E402
from humandiff.diffusion import pipeline, samplers  # noqa: E402
from humandiff.training import step  # noqa: E402

NATIVE = 24  # the input files' size: not the model's 16x16, so the model's resolution must be applied


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (NATIVE, NATIVE, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    ref_pose = np.zeros((NATIVE, NATIVE, 3), np.uint8)
    ref_pose[4:14, 6:16] = (0, 255, 85)
    Image.fromarray(ref_pose).save(tmp_path / "ref_pose.png")
    (tmp_path / "poses").mkdir()
    for i in range(2):
        frame = np.zeros((NATIVE, NATIVE, 3), np.uint8)
        frame[3 + 6 * i: 10 + 6 * i, 5:18] = (255, 0, 85)
        Image.fromarray(frame).save(tmp_path / "poses" / f"{i:03d}.png")
    return tmp_path


def _library(config, models, params, root, *, sampler, steps, guidance):
    """The frames a direct pipeline call gives at the config's resolution, seed 0 (the CLI's default)."""
    size = tuple(config.data.resolution)
    ref = media.load_image(str(root / "ref.png"), size)
    poses, _ = load_poses(str(root / "poses"), size)
    ref_pose, _ = load_poses(str(root / "ref_pose.png"), size, max_frames=1)
    inputs = {"ref_image": media.to_model_image(ref)[None], "poses": media.to_pose_image(poses)[None],
              "ref_pose": media.to_pose_image(ref_pose[:1])}
    cfg = pipeline.SamplingConfig(ref_timestep=config.diffusion.ref_timestep, use_ref_pose=config.model.use_ref_pose)
    table = samplers.make_sampler(step.make_schedule(config).config, sampler, steps,
                                  spacing=config.sample.timestep_spacing)
    frames = pipeline.make_generator(models, cfg)(params, table, inputs, jax.random.key(0), guidance)
    return media.to_uint8(np.asarray(frames)[0])


def _frames(out, n):
    return np.stack([np.asarray(Image.open(out / "frames" / f"frame_{i:04d}.png")) for i in range(n)])


def test_cli_defaults_are_the_models_settings_and_flags_override_them(tiny_ckpt, files):
    workdir, config, models, _, ema = tiny_ckpt
    s = config.sample
    # The recorded settings differ from the fallbacks, so using the fallbacks would show.
    assert (s.sampler, s.num_steps, s.guidance_scale) != ("ddim", 25, 3.5)
    common = ["--checkpoint", workdir, "--reference", str(files / "ref.png"), "--poses", str(files / "poses"),
              "--ref-pose", str(files / "ref_pose.png")]
    assert sample.main([*common, "--out", str(files / "a")]) == 0
    meta = json.loads((files / "a" / "metadata.json").read_text())
    assert {k: meta["settings"][k] for k in ("sampler", "steps", "guidance", "resolution", "ref_timestep",
                                             "use_ref_pose", "interaction")} == {
        "sampler": {"value": s.sampler, "from": "model"}, "steps": {"value": s.num_steps, "from": "model"},
        "guidance": {"value": s.guidance_scale, "from": "model"},
        "resolution": {"value": list(config.data.resolution), "from": "model"},
        "ref_timestep": {"value": config.diffusion.ref_timestep, "from": "model"},
        "use_ref_pose": {"value": True, "from": "model"}, "interaction": {"value": "causal", "from": "model"}}
    want = _library(config, models, ema, files, sampler=s.sampler, steps=s.num_steps, guidance=s.guidance_scale)
    assert want.std() > 0
    np.testing.assert_array_equal(_frames(files / "a", 2), want)  # same program, same inputs: bit-identical
    assert set(meta["seconds"]) == {"load", "compile", "sample", "sample_per_frame"}

    # A flag wins over the model, the rest stays the model's; metadata names the flag.
    assert sample.main([*common, "--out", str(files / "b"), "--guidance", "2.0", "--sampler", "dpm++"]) == 0
    meta = json.loads((files / "b" / "metadata.json").read_text())
    assert meta["settings"]["guidance"] == {"value": 2.0, "from": "--guidance"}
    assert meta["settings"]["sampler"] == {"value": "dpmsolver++", "from": "--sampler"}  # the one spelling
    assert meta["settings"]["steps"] == {"value": s.num_steps, "from": "model"}
    want = _library(config, models, ema, files, sampler=s.sampler, steps=s.num_steps, guidance=2.0)
    np.testing.assert_array_equal(_frames(files / "b", 2), want)


def test_an_export_folder_carries_the_workdirs_sampling_defaults(tiny_ckpt, exported):
    workdir, config = tiny_ckpt[:2]
    recorded = loading.read_settings(exported)
    assert (recorded["sampler"], recorded["num_steps"], recorded["guidance_scale"]) == (
        config.sample.sampler, config.sample.num_steps, config.sample.guidance_scale)

    class FromExport:  # resolve_settings reads only `.settings`: no need to load the weights
        settings = recorded

    from_workdir = sample.resolve_settings(loading.load_trained(workdir))
    assert sample.resolve_settings(FromExport()) == from_workdir
    assert all(v["from"] == "model" for k, v in from_workdir.items())


def test_a_model_trained_with_the_reference_pose_needs_one(tiny_ckpt, files, capsys):
    workdir, config = tiny_ckpt[:2]
    assert config.model.use_ref_pose
    with pytest.raises(SystemExit) as e:
        sample.main(["--checkpoint", workdir, "--reference", str(files / "ref.png"), "--poses",
                     str(files / "poses"), "--out", str(files / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err
    assert "use_ref_pose=True" in err and "pass --ref-pose" in err
    assert not (files / "out").exists()


def test_the_cli_reproduces_the_trainers_held_out_sample(tiny_ckpt, tmp_path):
    """The user's path gives what the trainer measured: `humandiff.sample` with only --checkpoint --reference --poses
    --ref-pose --out, on the files of a held-out identity, returns the trainer's own held-out sample (the `heldout`
    evaluator with one identity draws the same noise for seed 0), so its PSNR against the truth is the trainer's."""
    from humandiff.training import evals  # noqa: PLC0415

    workdir, config, models, _, ema = tiny_ckpt
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.evals.heldout.num_videos, config.evals.heldout.num_frames = 1, 2
    metrics, arrays = evals.HeldOut("heldout", models, config).evaluate(ema)
    inputs = arrays["inputs"]
    media.write_image(str(tmp_path / "ref.png"), media.to_uint8(inputs["ref_image"][0]))
    media.write_image(str(tmp_path / "ref_pose.png"), np.round(inputs["ref_pose"][0] * 255).astype(np.uint8))
    (tmp_path / "poses").mkdir()
    for i, pose in enumerate(inputs["poses"][0]):
        media.write_image(str(tmp_path / "poses" / f"{i:03d}.png"), np.round(pose * 255).astype(np.uint8))
    assert sample.main(["--checkpoint", workdir, "--reference", str(tmp_path / "ref.png"), "--poses",
                        str(tmp_path / "poses"), "--ref-pose", str(tmp_path / "ref_pose.png"),
                        "--out", str(tmp_path / "out")]) == 0
    got = _frames(tmp_path / "out", 2)
    np.testing.assert_array_equal(got, media.to_uint8(arrays["sample"][0]))
    cli_psnr = evals.psnr(got.astype(np.float64) / 127.5 - 1.0, arrays["truth"][0])
    trainer_psnr = evals.psnr(media.to_uint8(arrays["sample"][0]).astype(np.float64) / 127.5 - 1.0,
                              arrays["truth"][0])
    assert cli_psnr == trainer_psnr
    # The trainer scores the float samples, the CLI writes uint8 frames: measured 6.7845 vs 6.7842 dB.
    assert abs(metrics["psnr_scd"] - cli_psnr) < 0.01
