"""2 processes x 2 CPU devices (gloo collectives, launch/local_multiprocess.sh) give the same losses and held-out
samples as one process with 4 devices."""

import json
import os
import subprocess
import sys

import pytest

import humandiff.models.unet  # noqa: F401  (fails loudly if broken)
import humandiff.diffusion.losses  # noqa: F401  (fails loudly if broken)
import humandiff.data.loader  # noqa: F401  (fails loudly if broken)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DRIVER = os.path.join(ROOT, "tests", "training", "multiprocess_driver.py")


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **extra)
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = tmp_path / "single"
    subprocess.run([sys.executable, DRIVER, str(single)], cwd=ROOT, check=True, timeout=900,
                   env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    multi = tmp_path / "multi"
    result = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2", "2", DRIVER,
                             str(multi)], cwd=ROOT, timeout=900, capture_output=True, text=True,
                            env=_env(PYTHON=sys.executable, LOG_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _losses(single), _losses(multi)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * max(1.0, abs(x)), (a, b)  # reductions may be ordered differently
    assert (multi / "checkpoints" / "4").is_dir()
    # The identities were split over devices of both processes and gathered back for the metrics.
    with open(single / "evals" / "heldout" / "step_0000004.json") as fh:
        one = json.load(fh)
    with open(multi / "evals" / "heldout" / "step_0000004.json") as fh:
        two = json.load(fh)
    assert one["num_videos"] == two["num_videos"] == 4
    per_one, per_two = one.pop("per_video"), two.pop("per_video")
    assert two == pytest.approx(one, abs=1e-3)
    for key, values in per_one.items():  # per identity, in the same order
        assert per_two[key] == pytest.approx(values, abs=1e-3), key
    # Every process reads the whole held-out batches: the loss does not depend on the process count.
    with open(single / "evals" / "loss" / "step_0000004.json") as fh:
        one = json.load(fh)
    with open(multi / "evals" / "loss" / "step_0000004.json") as fh:
        assert json.load(fh)["loss"] == pytest.approx(one["loss"], rel=1e-5)
