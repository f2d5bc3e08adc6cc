"""`config.train.compilation_cache_dir` through `python -m humandiff.train` in fresh processes (JAX reads its cache
settings once per process): the first run writes its train step under the workdir, a restart loads it instead of
compiling; "" writes no cache anywhere, even with JAX_COMPILATION_CACHE_DIR set; a file in its place is refused.

The tiny test config without evaluations, 1-2 steps; every compile is cached (JAX's default threshold of 1 s of
compile time would make the test depend on the machine's speed)."""

import os
import subprocess
import sys

import pytest

from humandiff.training import runtime

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

_CONFIG = """
import ml_collections
from humandiff import config_lib

def get_config(arg=None):
    c = config_lib.load({tiny!r})
    c.evals = ml_collections.ConfigDict()  # no evaluators: only the train step's compile matters here
    c.total_steps = 1
    return c
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "config.py"
    path.write_text(_CONFIG.format(tiny=os.path.join(ROOT, "configs", "tiny_test.py")))
    return path


def _train(config_file, workdir, *flags, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    base.update(PYTHONPATH=ROOT, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **(env or {}))
    return subprocess.run([sys.executable, "-m", "humandiff.train", "--config", str(config_file), "--workdir",
                           str(workdir), *flags], capture_output=True, text=True, cwd=ROOT, env=base, timeout=600)


def _step_entries(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if "train_step" in n) if os.path.isdir(folder) else []


def test_a_restart_loads_the_train_step_from_the_workdirs_cache(config_file, tmp_path):
    workdir = tmp_path / "run"
    first = _train(config_file, workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "compiled the train step in" in first.stderr, first.stderr[-3000:]
    written = _step_entries(workdir / "compilation_cache")  # the default: a folder under the workdir
    assert len(written) == 1, os.listdir(workdir)

    again = _train(config_file, workdir, "--config.total_steps=2")  # resumes at step 1: a restart
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 1 of 2" in again.stderr, again.stderr[-3000:]
    assert "loaded the train step from the compilation cache in" in again.stderr, again.stderr[-3000:]
    assert "compiled the train step" not in again.stderr
    assert _step_entries(workdir / "compilation_cache") == written  # read, nothing new written for the step


def test_empty_writes_no_cache(config_file, tmp_path):
    workdir, elsewhere = tmp_path / "run", tmp_path / "jax_env_cache"
    run = _train(config_file, workdir, "--config.train.compilation_cache_dir=",
                 env={"JAX_COMPILATION_CACHE_DIR": str(elsewhere)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "compiled the train step in" in run.stderr, run.stderr[-3000:]
    assert not (workdir / "compilation_cache").exists()
    assert not elsewhere.exists() or not os.listdir(elsewhere)  # "" wins over JAX's environment variable


def test_a_file_in_its_place_is_refused(config_file, tmp_path):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    run = _train(config_file, tmp_path / "run", f"--config.train.compilation_cache_dir={taken}")
    assert run.returncode == 2, run.stderr[-3000:]
    assert f"config.train.compilation_cache_dir: {taken} is a file" in run.stderr, run.stderr[-3000:]
    assert taken.read_text() == "mine"


def test_relative_paths_are_under_the_workdir():
    assert runtime.compilation_cache_dir("compilation_cache", "/runs/a") == "/runs/a/compilation_cache"
    assert runtime.compilation_cache_dir("/shared/cache", "/runs/a") == "/shared/cache"
    assert runtime.compilation_cache_dir("gs://bucket/cache", "/runs/a") == "gs://bucket/cache"
    assert runtime.compilation_cache_dir("", "/runs/a") == ""
