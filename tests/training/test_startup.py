"""What `python -m humandiff.train` shows before the first progress bar: what is built (task, model, mesh, parameter
counts), "compiling the train step" and its time (or that it was loaded from the compilation cache), the step a run
resumes from; a finished run says so and stops without building evaluators or compiling the step. Same tiny config
as test_train_e2e (its compile is cached)."""

import re

import pytest

import humandiff.models.unet  # noqa: F401  (fails loudly if broken)
import humandiff.data.synthetic  # noqa: F401  (fails loudly if broken)

from humandiff import config_lib, train  # noqa: E402
from humandiff.training import evals, modeling, state as state_lib  # noqa: E402


def _config():
    return config_lib.load("configs/tiny_test.py")


def _run(workdir, capsys, **kwargs):
    """Trains; returns (history, stderr lines before the progress bar, all stderr)."""
    history = train.train_and_evaluate(_config(), str(workdir), evaluators={}, **kwargs)
    err = capsys.readouterr().err
    before_bar = err.split("train:")[0] if "train:" in err else err  # tqdm's bar is labelled "train"
    return history, [line for line in before_bar.splitlines() if line.strip()], err


def test_startup_lines_resume_and_finished(tmp_path, capsys, monkeypatch):
    config = _config()
    models, _ = modeling.build(config)
    import jax  # noqa: PLC0415

    shapes = jax.eval_shape(lambda k: modeling.init_params(models, config, k), jax.random.key(0))
    count = modeling.count_params(shapes)

    _, lines, err = _run(tmp_path, capsys, stop_after=4)  # a fresh run, stopped after the checkpoint at 4
    assert "train:" in err  # the bar came after these lines
    assert re.fullmatch(r"building the image model: UNet \([\d, ]+\), pixel space, causal interaction; data synthetic "
                        r"at 16x16, batch 8, 8 steps; mesh \{.*\} over 8 cpu device\(s\), 1 process\(es\)",
                        lines[0]), lines
    assert f"parameters: {count:,} trainable, 0 frozen" in lines  # the tiny config trains everything
    assert "starting at step 0 of 8" in lines
    i = lines.index("compiling the train step ...")
    # "loaded ... from the compilation cache" when tests/conftest.py's cache already holds this step
    assert re.fullmatch(r"(compiled|loaded) the train step (from the compilation cache )?in \d+\.\d s",
                        lines[i + 1]), lines

    _, lines, _ = _run(tmp_path, capsys)  # resumes
    assert f"resuming from step 4 of 8 ({tmp_path / 'checkpoints'})" in lines, lines
    assert "compiling the train step ..." in lines

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run built evaluators or compiled the step")

    monkeypatch.setattr(state_lib, "compile_step", refuse)
    monkeypatch.setattr(evals, "build", refuse)
    history = train.train_and_evaluate(_config(), str(tmp_path))  # evaluators of the config: not built
    err = capsys.readouterr().err
    assert history == []
    assert f"finished: {tmp_path} already holds step 8 (config.total_steps=8); nothing to train" in err, err
    assert "train:" not in err and "compiling" not in err  # no progress bar, no compile
