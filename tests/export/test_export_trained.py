"""Export of a checkpoint written by the real trainer (two optimizer steps of the tiny config), read back with the
config.json the trainer writes: diffusers loads the UNet with no missing keys, its output equals the JAX UNet's on
the trained EMA weights (<= 1e-4 relative), `humandiff.sample` animates straight from the training workdir, a
1-device process reads the checkpoint the 8-device run wrote, and the held-out check runs on it."""

import numpy as np
import pytest

from .conftest import CONFIG_SPEC, rel_err, require_parts

require_parts()
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
import humandiff.data.loader  # noqa: F401  (fails loudly if broken)

import jax  # noqa: E402

from humandiff.checkpoints import export  # noqa: E402


@pytest.mark.slow  # compiles the train step (~2 min on a busy 2-core CPU; shared with tests/training via the cache)
def test_export_of_a_trained_checkpoint(tmp_path):
    from humandiff import config_lib, train  # noqa: PLC0415

    config = config_lib.load(CONFIG_SPEC)  # unmodified, so the compiled step is the training tests' one
    config.total_steps, config.ckpt.every, config.log_every = 2, 2, 1
    train.train_and_evaluate(config, str(tmp_path / "run"))  # its evaluations (config.evals) run at the end
    trained = export.read_checkpoint(str(tmp_path / "run"), ema=True)  # config from <workdir>/config.json
    assert trained.step == 2
    assert trained.config.model.interaction == config.model.interaction
    export.write_export(trained, str(tmp_path / "out"))
    unet, info = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "out" / "unet", output_loading_info=True)
    assert not any(info.values()), info
    rng = np.random.default_rng(0)
    unet_cfg = trained.models.unet
    x = rng.standard_normal((2, 16, 16, unet_cfg.in_channels)).astype(np.float32)
    ctx = rng.standard_normal((2, 1, unet_cfg.cross_attention_dim)).astype(np.float32)
    t = np.array([900.0, 30.0], np.float32)
    want = jax.jit(trained.models.unet.apply)({"params": trained.params["unet"]}, x, t, ctx)
    with torch.no_grad():
        got = unet(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t), torch.from_numpy(ctx)).sample
    err = rel_err(got.numpy().transpose(0, 2, 3, 1), want)
    print(f"trained checkpoint (2 steps, EMA): exported UNet vs JAX relative error {err:.2e}")
    assert err <= 1e-4
    _init_checkpoint_reads_a_workdir_or_an_export(str(tmp_path / "run"), str(tmp_path / "out"), trained)
    _sample_from_workdir(str(tmp_path / "run"), tuple(config.data.resolution), tmp_path)
    _read_on_one_device(str(tmp_path / "run"), trained, jax.device_count())
    _held_out_check(str(tmp_path / "run"))


def _init_checkpoint_reads_a_workdir_or_an_export(workdir, out, trained):
    """`model.init_checkpoint` (the next stage's start) reads through the one trained-model reader: the workdir's
    EMA parameters, or the same parameters from its export folder."""
    from humandiff.training import state as state_lib  # noqa: PLC0415
    from humandiff.weights import io  # noqa: PLC0415

    want = io.flatten(trained.params)
    for path in (workdir, out):
        got = io.flatten(state_lib._load_init_checkpoint(path, "shared"))
        assert set(got) == set(want), path
        for key, value in want.items():
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=f"{path}: {key}")
    with pytest.raises(state_lib.checkpoint.CheckpointError, match="config.model.init_checkpoint="):
        state_lib._load_init_checkpoint(out + "_missing", "shared")


def _held_out_check(workdir):
    """`python -m humandiff.training.evals WORKDIR`: the run's own evaluations on its checkpoint give the numbers
    the trainer wrote at its end; overrides (more identities) write beside them."""
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    from humandiff.training import evals  # noqa: PLC0415

    result = evals.main([workdir])
    assert set(result) == {"heldout", "loss"}
    for name, values in result.items():
        with open(os.path.join(workdir, "evals", name, "step_0000002.json")) as fh:
            trainer = json.load(fh)
        metrics = {k: v for k, v in trainer.items() if k not in ("step", "num_videos", "num_frames", "per_video")}
        assert values["step"] == 2 and values["ema"]
        # Same data, seed and parameters on the same 8-device layout: equal within float32 rounding.
        assert {k: values[k] for k in metrics} == pytest.approx(metrics, rel=1e-6, abs=1e-6), name
    result = evals.main([workdir, "--eval", "heldout", "--num_videos", "2", "--num_frames", "2"])["heldout"]
    assert result["num_videos"] == 2 and result["num_frames"] == 2
    assert all(5.0 < result[k] < 60.0 for k in ("psnr_scd", "psnr_no_ref", "psnr_copy_ref")), result
    with open(os.path.join(workdir, "evals", "heldout", "cli", "step_0000002_num_frames=2_num_videos=2.json")) as fh:
        assert json.load(fh) == result
    _held_out_check_in_new_processes(workdir, result)


_EVALS = """
import sys, jax
if sys.argv[2] == "after_jax":
    jax.devices()  # a notebook that has already run JAX: its devices stay as they are
from humandiff.training import evals
result = evals.main([sys.argv[1], "--eval", "heldout", "--num_videos", "2", "--num_frames", "2"])
print(jax.device_count(), result["heldout"]["psnr_scd"])
"""


def _held_out_check_in_new_processes(workdir, result):
    """Started fresh, the CLI splits the CPU as the run did (the tiny config inherits the demo's
    `mesh.cpu_devices=2`) and samples one identity per device; after JAX has run, it keeps the devices. The same
    numbers either way as in this 8-device process (where 2 identities do not split over 8 devices)."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    for when, devices in (("first", 2), ("after_jax", 1)):
        out = subprocess.run([sys.executable, "-c", _EVALS, workdir, when], env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        count, psnr = out.stdout.strip().splitlines()[-1].split()
        assert int(count) == devices, when
        assert float(psnr) == pytest.approx(result["psnr_scd"], abs=1e-3), when


_READ = """
import sys, jax, numpy as np
from humandiff.checkpoints import export
trained = export.read_checkpoint(sys.argv[1], ema=True)
print(jax.device_count(), sum(float(np.abs(x).sum()) for x in jax.tree.leaves(trained.params)))
"""


def _read_on_one_device(workdir, trained, devices):
    """The checkpoint was written on the test process's 8 devices; a 1-device process (a laptop export) reads the
    same parameters. Orbax's own restore without a target tree refuses a different device topology."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    assert devices > 1
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _READ, workdir], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    count, total = out.stdout.split()
    assert int(count) == 1
    want = sum(float(np.abs(x).sum()) for x in jax.tree.leaves(trained.params))
    assert float(total) == pytest.approx(want, rel=1e-6)


def _sample_from_workdir(workdir, size, tmp_path):
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    from humandiff import sample  # noqa: PLC0415

    h, w = size
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    (tmp_path / "poses").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "poses" / f"{i}.png")
    out = tmp_path / "sampled"
    rc = sample.main(["--checkpoint", workdir, "--reference", str(tmp_path / "ref.png"), "--poses",
                      str(tmp_path / "poses"), "--ref-pose", str(tmp_path / "poses" / "0.png"), "--out", str(out),
                      "--steps", "2"])  # the tiny config trains with the reference pose
    assert rc == 0
    assert not (out / "model").exists()  # the workdir is read directly, not exported on the fly
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["frame_0000.png", "frame_0001.png"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_frames"] == 2 and meta["sources"]["workdir"] == os.path.abspath(workdir)
