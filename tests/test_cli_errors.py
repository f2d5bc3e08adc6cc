"""The CLI error convention (`humandiff.cli`, README "Errors") through the real entry points: bad input exits 2 with
ONE `error:` line naming the culprit (file, key or value), nothing a user had is replaced or lost, `--debug` shows
the traceback. In-process `main(argv)` where possible; `python -m humandiff.train` in a subprocess (absl flags are
process-global)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines import build
from humandiff import evaluate, sample

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY = os.path.join(ROOT, "configs", "tiny_test.py")


def _one_error_line(err: str) -> str:
    """The single `error:` line of `err` (after any progress bars); fails on a second line or a traceback."""
    assert err.count("error:") == 1 and "Traceback" not in err, err
    line = err[err.index("error: "):]
    assert line.count("\n") == 1, err
    return line


def _bad_input(capsys, main, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    return _one_error_line(capsys.readouterr().err)


def _train(*argv, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "humandiff.train", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)


# ------------------------------------------------------------------------------------------------ train: config


@pytest.mark.parametrize("case", ["typo", "missing_config", "workdir_is_file"])
def test_train_config_errors(case, tmp_path):
    args = ["--config", TINY, "--workdir", tmp_path / "w"]
    if case == "typo":
        args.append("--config.optim.lrr=1e-3")
        named = ["--config.optim.lrr", "did you mean optim.lr?"]
    elif case == "missing_config":
        args[1] = tmp_path / "nope.py"
        named = [str(tmp_path / "nope.py")]
    else:
        (tmp_path / "w").write_text("my notes")
        named = [f"--workdir {tmp_path / 'w'}"]
    run = _train(*args)
    assert run.returncode == 2, run.stderr[-3000:]
    line = _one_error_line(run.stderr)
    assert all(n in line for n in named), line
    if case == "workdir_is_file":
        assert (tmp_path / "w").read_text() == "my notes"


def test_debug_shows_the_traceback(tmp_path):
    run = _train("--config", TINY, "--workdir", tmp_path / "w", "--config.optim.lrr=1e-3", "--debug")
    assert run.returncode == 2
    assert "Traceback" in run.stderr and "ConfigError" in run.stderr
    assert run.stderr.rstrip().splitlines()[-1].startswith("error: unknown config key in --config.optim.lrr")


def test_train_refused_by_the_checkpoint_keeps_config_json(tmp_path):
    """A run whose config does not fit the workdir's checkpoint stops before writing anything of its own."""
    from humandiff.training import checkpoint  # noqa: PLC0415

    workdir = tmp_path / "run"
    ckpt = checkpoint.Checkpointer(str(workdir), every=1, keep=1, async_save=False)
    ckpt.save(4, {"params": {"w": np.zeros((3,), np.float32)}}, force=True)  # another model's state
    ckpt.close()
    before = b'{"model": "the config that trained this checkpoint"}\n'
    (workdir / "config.json").write_bytes(before)
    run = _train("--config", TINY, "--workdir", workdir)
    assert run.returncode == 2, run.stderr[-3000:]
    line = _one_error_line(run.stderr)
    assert "cannot restore checkpoint step 4" in line and str(workdir / "checkpoints") in line
    assert (workdir / "config.json").read_bytes() == before
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]


def test_train_names_a_video_too_short_for_the_sampling(tmp_path):
    """A built dataset whose videos are shorter than the frame sampling needs: one line naming the video and the
    knobs, before anything is written to the workdir."""
    from data_pipelines import fake_layouts  # noqa: PLC0415

    raw = fake_layouts.write_ubc_fashion(str(tmp_path / "raw"), num_train=2, num_test=1, num_frames=6, height=16,
                                         width=16)
    build.build("ubc_fashion", str(tmp_path / "out"), raw)
    workdir = tmp_path / "w"
    run = _train("--config", TINY, "--workdir", workdir, "--config.data.source=tfds",
                 f"--config.data.data_dir={tmp_path / 'out'}", "--config.data.name=ubc_fashion",
                 "--config.data.min_margin=8")
    assert run.returncode == 2, run.stderr[-3000:]
    line = _one_error_line(run.stderr)
    assert "6 frames cannot give a pair 8 frames apart" in line and "data.skip_short=True" in line, line
    assert "video " in line and not (workdir / "config.json").exists()


# --------------------------------------------------------------------------------------------- sample: poses


@pytest.fixture
def sample_inputs(tmp_path):
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "ref.png")
    kp = np.zeros((3, 133, 3), np.float32)
    kp[..., :2], kp[..., 2] = 8.0, 1.0
    np.save(tmp_path / "ok.npy", kp)
    return tmp_path, kp


def _sample_args(root, poses, *extra):
    # The keypoints and --out are checked before the checkpoint is read: a missing one is never reached.
    return ["--checkpoint", root / "no_checkpoint", "--reference", root / "ref.png", "--poses", poses,
            "--out", root / "out", *extra]


@pytest.mark.parametrize("case", ["nan", "outside", "outside_keypoints_size", "bad_json"])
def test_sample_keypoint_files(case, sample_inputs, capsys):
    root, kp = sample_inputs
    path, extra = root / f"{case}.npy", []
    if case == "nan":
        kp[1, 5, 0] = np.nan
        named = ["frame 1, keypoint 5", "NaN"]
    elif case == "outside":  # pixels of a bigger frame, no --keypoints-size
        kp[2, 7, :2] = (300.0, 200.0)
        named = ["frame 2, keypoint 7", "x=300", "--keypoints-size"]
    elif case == "outside_keypoints_size":
        kp[0, 9, 1] = 90.0
        extra, named = ["--keypoints-size", "64x32"], ["frame 0, keypoint 9", "y=90", "64x32"]
    if case == "bad_json":
        path = root / "poses.json"
        path.write_text('{"frames": [1, 2,')
        named = ["cannot read keypoints"]
    else:
        np.save(path, kp)
    line = _bad_input(capsys, sample.main, *_sample_args(root, path, *extra))
    assert str(path) in line and all(n in line for n in named), line


def test_sample_keeps_earlier_results(sample_inputs, capsys):
    root, _ = sample_inputs
    (root / "out" / "frames").mkdir(parents=True)
    (root / "out" / "result.mp4").write_bytes(b"the result of yesterday")
    line = _bad_input(capsys, sample.main, *_sample_args(root, root / "ok.npy"))
    assert str(root / "out" / "result.mp4") in line and "--overwrite" in line
    assert (root / "out" / "result.mp4").read_bytes() == b"the result of yesterday"
    # --overwrite gets past that check (to the missing checkpoint, here)
    line = _bad_input(capsys, sample.main, *_sample_args(root, root / "ok.npy", "--overwrite"))
    assert "no_checkpoint" in line


# ---------------------------------------------------------------------------------------------- weight keys


def test_weight_key_errors_name_the_files_key(tmp_path, capsys):
    from safetensors.numpy import load_file, save_file  # noqa: PLC0415

    from humandiff.models.unet import UNet2DConditionModel  # noqa: PLC0415
    from humandiff.weights import io  # noqa: PLC0415
    from humandiff.weights.diffusers import save_unet, unet_param_shapes  # noqa: PLC0415

    module = UNet2DConditionModel(block_out_channels=(8,), layers_per_block=1, down_block_types=("DownBlock2D",),
                                  up_block_types=("UpBlock2D",), cross_attention_dim=8, attention_head_dim=2,
                                  norm_num_groups=4, sample_size=8)
    params = io.unflatten({k: np.zeros(shape, np.float32) for k, shape in unet_param_shapes(module).items()})
    save_unet(str(tmp_path / "ckpt" / "unet"), module, params)  # a diffusers folder, then one key renamed
    weights = tmp_path / "ckpt" / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["time_embedding.linear_3.weight"] = state.pop("time_embedding.linear_2.weight")
    save_file(state, str(weights))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "ref.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "pose.png")
    line = _bad_input(capsys, sample.main, "--checkpoint", tmp_path / "ckpt", "--reference", tmp_path / "ref.png",
                      "--poses", tmp_path / "pose.png", "--out", tmp_path / "out")
    assert str(tmp_path / "ckpt" / "unet") in line
    assert "missing (1): time_embedding.linear_2.weight (time_embedding/linear_2/kernel)" in line
    assert "unexpected (1): time_embedding.linear_3.weight (time_embedding/linear_3/kernel)" in line


# ------------------------------------------------------------------------------------------- data pipelines


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_build_names_a_missing_or_empty_manual_dir(case, tmp_path, capsys):
    manual = tmp_path / "raw"
    if case == "empty":
        manual.mkdir()
    line = _bad_input(capsys, build.main, "--dataset", "ubc_fashion", "--manual_dir", manual,
                      "--data_dir", tmp_path / "out")
    assert f"--manual_dir {manual}" in line and ("is empty" if case == "empty" else "is not a folder") in line


def test_extract_corrupt_onnx_and_existing_pose_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from data_pipelines.pose import extract  # noqa: PLC0415

    det, pose = tmp_path / "yolox_l.onnx", tmp_path / "dw-ll_ucoco_384.onnx"
    det.write_bytes(b"half a download")
    pose.write_bytes(b"half a download")
    (tmp_path / "clip").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "clip" / "0000.png")
    line = _bad_input(capsys, extract.main, "--video", tmp_path / "clip", "--det", det, "--pose", pose)
    assert f"cannot load the ONNX model in {det}" in line
    (tmp_path / "clip.npy").write_bytes(b"hand-corrected poses")
    line = _bad_input(capsys, extract.main, "--video", tmp_path / "clip", "--det", det, "--pose", pose)
    assert str(tmp_path / "clip.npy") in line and "--overwrite" in line
    assert (tmp_path / "clip.npy").read_bytes() == b"hand-corrected poses"


def test_evaluate_corrupt_frame(tmp_path, capsys):
    for side in ("pred", "gt"):
        os.makedirs(tmp_path / side / "00001")
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / side / "00001" / f"{i:04d}.png")
    bad = tmp_path / "pred" / "00001" / "0001.png"
    bad.write_bytes(b"\x89PNG truncated")
    line = _bad_input(capsys, evaluate.main, "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--metrics", "l1",
                      "--out", tmp_path / "m")
    assert str(bad) in line


def test_bad_flag_is_one_line(capsys):
    line = _bad_input(capsys, sample.main, "--steps", "many")
    assert "--steps" in line and "'many'" in line and "--help" in line
