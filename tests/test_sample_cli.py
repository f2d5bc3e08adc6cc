"""`python -m humandiff.sample` end to end on a tiny random diffusers-layout checkpoint, and its input errors."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from humandiff import sample
from humandiff import media
from humandiff.data import pose_input

SIZE = 16


def _random_params(module, seed, *args):
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """unet/ vae/ image_encoder/ scheduler/ + pose_encoder.safetensors, all tiny and random (torch save_pretrained)."""
    import humandiff.models.pose_encoder  # noqa: F401  (fails loudly if broken)
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import save_file  # noqa: PLC0415

    import jax.numpy as jnp  # noqa: PLC0415

    from humandiff.models.pose_encoder import PoseEncoder  # noqa: PLC0415
    from humandiff.weights.pose import pose_encoder_to_torch  # noqa: PLC0415

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    # One level each (the VAE then does not downsample): the CLI's compile time is most of this test.
    diffusers.UNet2DConditionModel(
        sample_size=SIZE, block_out_channels=(32,), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8).save_pretrained(root / "unet")
    diffusers.AutoencoderKL(
        block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, norm_num_groups=8, sample_size=SIZE).save_pretrained(root / "vae")
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=32)).save_pretrained(root / "image_encoder")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
        "rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing",
        "steps_offset": 0, "clip_sample": False}))
    pose = PoseEncoder(out_channels=32, block_out_channels=(8,))  # no downsampling, like the one-level VAE
    params = _random_params(pose, 1, jnp.zeros((1, SIZE, SIZE, 3)))
    save_file(pose_encoder_to_torch(params), str(root / "pose_encoder.safetensors"))
    return str(root)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "ref.png")
    (root / "poses").mkdir()
    for i in range(3):
        frame = np.zeros((SIZE, SIZE, 3), np.uint8)
        frame[2 + 3 * i: 6 + 3 * i, 4:12] = (255, 0, 85)
        Image.fromarray(frame).save(root / "poses" / f"{i:03d}.png")
    (root / "empty").mkdir()
    (root / "broken.mp4").write_bytes(b"not a video at all" * 10)
    return root


def test_cli_end_to_end(checkpoint, inputs, tmp_path):
    out = tmp_path / "out"
    rc = sample.main(["--checkpoint", checkpoint, "--reference", str(inputs / "ref.png"), "--poses",
                      str(inputs / "poses"), "--out", str(out), "--steps", "3", "--guidance", "2.5", "--fps", "5"])
    assert rc == 0
    frames = sorted(os.listdir(out / "frames"))
    assert frames == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    video, fps = media.read_video(str(out / "result.mp4"))
    assert video.shape == (3, SIZE, SIZE, 3) and abs(fps - 5) < 1e-6
    grid, _ = media.read_video(str(out / "grid.mp4"))
    assert grid.shape == (3, SIZE, 3 * SIZE, 3)
    with Image.open(out / "result.gif") as gif:
        assert gif.n_frames == 3
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_frames"] == 3 and meta["steps"] == 3 and meta["guidance"] == 2.5
    assert meta["sampler"] == "ddim" and meta["schedule"]["zero_terminal_snr"] is True
    assert set(meta["sources"]) == {"unet", "vae", "image_encoder", "pose_encoder", "scheduler"}
    png = np.asarray(Image.open(out / "frames" / "frame_0001.png"))
    assert png.shape == (SIZE, SIZE, 3) and png.std() > 0


@pytest.mark.parametrize("case,expected", [
    ("missing_reference", "reference image not found"),
    ("empty_folder", "has no pose images"),
    ("broken_video", "cannot read pose video"),
    ("bad_size", "divisible by 8"),
    ("missing_checkpoint", "checkpoint folder not found"),
])
def test_cli_bad_inputs(inputs, tmp_path, capsys, case, expected):
    args = {"--checkpoint": str(tmp_path / "no_ckpt"), "--reference": str(inputs / "ref.png"),
            "--poses": str(inputs / "poses"), "--out": str(tmp_path / "out")}
    if case == "missing_reference":
        args["--reference"] = str(inputs / "nope.png")
    elif case == "empty_folder":
        args["--poses"] = str(inputs / "empty")
    elif case == "broken_video":
        args["--poses"] = str(inputs / "broken.mp4")
    elif case == "bad_size":
        args["--size"] = "20x16"
    with pytest.raises(SystemExit) as e:
        sample.main([x for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert expected in err and err.count("error:") == 1


def test_pose_sources_video_and_keypoints(tmp_path):
    from humandiff.data.synthetic import make_video  # noqa: PLC0415

    rec = make_video(0, 4, 64, 48)
    np.save(tmp_path / "kp.npy", rec["keypoints"])
    rendered, fps = pose_input.load_poses(str(tmp_path / "kp.npy"), (32, 24), keypoints_size=(64, 48))
    assert rendered.shape == (4, 32, 24, 3) and fps is None and rendered.max() > 0
    media.write_mp4(str(tmp_path / "p.mp4"), rendered.repeat(2, 1).repeat(2, 2), 12.0)
    frames, fps = pose_input.load_poses(str(tmp_path / "p.mp4"), (32, 24), max_frames=3)
    assert frames.shape == (3, 32, 24, 3) and abs(fps - 12.0) < 1e-6
    with pytest.raises(FileNotFoundError, match="keypoints file not found"):
        pose_input.load_poses(str(tmp_path / "missing.json"), (32, 24))
    assert media.parse_size("24") == (24, 24) and media.parse_size("16x32") == (16, 32)


def test_checkpoint_pose_encoder_errors(checkpoint, tmp_path):
    import jax.numpy as jnp  # noqa: PLC0415
    from safetensors.numpy import save_file  # noqa: PLC0415

    from humandiff.checkpoints import loading  # noqa: PLC0415
    from humandiff.models.pose_encoder import PoseEncoder  # noqa: PLC0415
    from humandiff.weights import io  # noqa: PLC0415
    from humandiff.weights.pose import pose_encoder_to_torch  # noqa: PLC0415

    loaded = loading.load_checkpoint(checkpoint)
    assert loaded.models.unet.pose_injection == "conv_in" and loaded.spacing == "trailing"
    wrong = tmp_path / "pose7.safetensors"
    save_file(pose_encoder_to_torch(_random_params(PoseEncoder(7, (8,)), 2, jnp.zeros((1, 8, 8, 3)))), str(wrong))
    with pytest.raises(ValueError, match="outputs 7 channels"):
        loading.load_checkpoint(checkpoint, pose_encoder=str(wrong))
    coords = tmp_path / "pose_coords.safetensors"  # a 5-channel conv_in: the encoder reads coordinate channels
    save_file(pose_encoder_to_torch(_random_params(PoseEncoder(7, (8,), coord_channels=True), 2,
                                                   jnp.zeros((1, 8, 8, 3)))), str(coords))
    assert loading.load_pose_encoder(str(coords))[0].coord_channels
    assert not loading.load_pose_encoder(str(wrong))[0].coord_channels
    four = dict(pose_encoder_to_torch(_random_params(PoseEncoder(7, (8,)), 2, jnp.zeros((1, 8, 8, 3)))))
    four["conv_in.weight"] = np.zeros((8, 4, 3, 3), np.float32)
    save_file(four, str(tmp_path / "pose4.safetensors"))
    with pytest.raises(io.WeightsError, match="conv_in.weight reads 4 channels"):
        loading.load_pose_encoder(str(tmp_path / "pose4.safetensors"))
    save_file({"foo.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "junk.safetensors"))
    with pytest.raises(io.WeightsError, match="not a pose encoder"):
        loading.load_pose_encoder(str(tmp_path / "junk.safetensors"))


def test_cli_uses_the_checkpoints_training_settings(checkpoint, inputs, tmp_path):
    """model_index.json's "humandiff" block (humandiff.export) sets the sampler's defaults; flags still win."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint, ckpt)
    (ckpt / "model_index.json").write_text(json.dumps(
        {"_class_name": "SCDPipeline", "humandiff": {"interaction": "full", "ref_timestep": 100, "use_ref_pose": False}}))
    common = ["--checkpoint", str(ckpt), "--reference", str(inputs / "ref.png"), "--poses", str(inputs / "poses"),
              "--steps", "2"]
    assert sample.main([*common, "--out", str(tmp_path / "a")]) == 0
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["sampling"]["mode"] == "joint"  # full interaction: the reference cannot be cached
    assert meta["sampling"]["ref_timestep"] == 100 and meta["sampling"]["use_ref_pose"] is False
    (ckpt / "model_index.json").write_text(json.dumps({"humandiff": {"ref_timestep": 100}}))
    assert sample.main([*common, "--out", str(tmp_path / "b"), "--ref-timestep", "0"]) == 0
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())
    assert meta["sampling"]["mode"] == "cached" and meta["sampling"]["ref_timestep"] == 0


def test_trainer_evaluation_prepares_clip_like_the_cli(checkpoint):
    """The trainer's held-out evaluation and `sample.animate` give the image encoder the same input: CLIP
    preprocessing of the uint8 reference (`Models.clip_input`), not of its [-1, 1] float copy (bicubic resizing
    in float differs by up to about a third of a level)."""
    from humandiff.training import evals  # noqa: PLC0415

    models = sample.load(str(checkpoint)).models
    ref = np.random.default_rng(3).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    signed = ref.astype(np.float32) * (2.0 / 255.0) - 1.0  # as the held-out examples hold the reference
    got = evals._clip_inputs(models, {"ref_image": signed})["clip_image"]
    np.testing.assert_array_equal(got, np.asarray(models.clip_input(ref), np.float32))
    assert got.shape == (2, models.image_encoder.config.image_size, models.image_encoder.config.image_size, 3)
