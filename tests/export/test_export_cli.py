"""`python -m humandiff.export`: the folder it writes (diffusers loads it with no missing/unexpected keys, in
fp16 and bf16 too; EMA weights when asked; model_index.json and card) and one clear error per kind of bad input."""

import os

import numpy as np
import pytest

from .conftest import STEP, read_json, require_parts, tiny_config, write_checkpoint

require_parts()
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from humandiff import export as cli  # noqa: E402
from humandiff.weights import io  # noqa: E402
from humandiff.weights.diffusers import to_state_dict  # noqa: E402


def _run(capsys, *argv):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # bad input: one error line, status 2 (humandiff.cli)
        code = e.code
    return code, capsys.readouterr().err


def test_fp32_export_layout_loads_in_diffusers(exported, tiny_ckpt):
    assert sorted(os.listdir(exported)) == ["README.md", "model_index.json", "pose_encoder", "scheduler", "unet"]
    unet, info = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(exported, "unet"),
                                                                output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys, no errors
    index = read_json(os.path.join(exported, "model_index.json"))
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["humandiff"]["step"] == STEP and index["humandiff"]["ema"] is False
    assert index["humandiff"]["training_config"]["model"]["unet"]["block_out_channels"] == [16, 32]
    sched = diffusers.DDIMScheduler.from_pretrained(exported, subfolder="scheduler")
    assert sched.config.prediction_type == "v_prediction" and sched.config.rescale_betas_zero_snr
    card = open(os.path.join(exported, "README.md"), encoding="utf-8").read()
    assert f"step {STEP}" in card and "load_pipeline" in card
    want = to_state_dict(tiny_ckpt[3]["unet"])
    got = {k: v.numpy() for k, v in unet.state_dict().items()}
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal(got["conv_in.weight"], want["conv_in.weight"])


def test_cli_ema_half_precision_and_overwrite(tiny_ckpt, tmp_path, capsys):
    workdir, config, _, _, ema = tiny_ckpt
    out = tmp_path / "out"
    code, err = _run(capsys, "--checkpoint", os.path.join(workdir, "checkpoints", str(STEP)), "--out", out,
                     "--ema", "--dtype", "fp16")
    assert code == 0, err
    unet = diffusers.UNet2DConditionModel.from_pretrained(out / "unet", torch_dtype=torch.float16)
    assert unet.dtype == torch.float16
    want = to_state_dict(ema["unet"])["conv_in.weight"].astype(np.float16)
    np.testing.assert_array_equal(unet.state_dict()["conv_in.weight"].numpy(), want)
    assert read_json(out / "model_index.json")["humandiff"]["ema"] is True
    # A non-empty output folder is replaced only with --overwrite.
    code, err = _run(capsys, "--checkpoint", workdir, "--out", out, "--dtype", "bf16")
    assert code == 2 and "--overwrite" in err and str(out) in err
    code, err = _run(capsys, "--checkpoint", workdir, "--out", out, "--dtype", "bf16", "--overwrite")
    assert code == 0, err
    state = io.read_state_dict(str(out / "pose_encoder"))  # bf16 is read back through torch as float32
    assert sorted(state) == sorted(to_state_dict(tiny_ckpt[3]["pose_encoder"]))
    unet = diffusers.UNet2DConditionModel.from_pretrained(out / "unet", torch_dtype=torch.bfloat16)
    assert unet.dtype == torch.bfloat16
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no staging folder left behind


def test_config_flag_when_workdir_has_no_config_json(tmp_path, capsys):
    config = tiny_config()
    write_checkpoint(tmp_path / "run", config, step=3, with_config_json=False)
    code, err = _run(capsys, "--checkpoint", tmp_path / "run", "--out", tmp_path / "a")
    assert code == 2 and "--config" in err and "config.json" in err
    from .conftest import CONFIG_SPEC, UNET_OVERRIDES  # noqa: PLC0415

    del UNET_OVERRIDES  # the spec alone gives the one-level tiny UNet: a shape mismatch names the keys
    code, err = _run(capsys, "--checkpoint", tmp_path / "run", "--out", tmp_path / "a", "--config", CONFIG_SPEC)
    assert code == 2 and "does not match" in err and "unet/" in err
    code, err = _run(capsys, "--checkpoint", tmp_path / "run", "--out", tmp_path / "a", "--config", "nope.py")
    assert code == 2 and "nope.py" in err


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "bad_step", "dtype", "out_is_file"])
def test_bad_input_gives_one_clear_error(case, tiny_ckpt, tmp_path, capsys):
    workdir = tiny_ckpt[0]
    args = {"--checkpoint": workdir, "--out": tmp_path / "out"}
    expect = ""
    if case == "missing":
        args["--checkpoint"], expect = tmp_path / "nowhere", "not a directory"
    elif case == "not_a_checkpoint":
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "notes.txt").write_text("hi")
        args["--checkpoint"], expect = tmp_path / "plain", "not a humandiff training checkpoint"
    elif case == "bad_step":
        args["--step"], expect = 5, "no checkpoint for step 5"
    elif case == "dtype":
        args["--dtype"], expect = "int8", "unknown --dtype 'int8'"
    elif case == "out_is_file":
        (tmp_path / "out").write_text("x")
        expect = "not a directory"
    code, err = _run(capsys, *[x for kv in args.items() for x in kv])
    assert code == 2
    assert err.startswith("error: ") and expect in err and len(err.strip().splitlines()) == 1, err
