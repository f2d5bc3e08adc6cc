"""README.md's commands: every `python -m humandiff.X` / `data_pipelines.X` in its ```bash blocks names a module
that exists and only flags its parser accepts (exact names, no argparse abbreviations), with arguments that parse;
each of those modules answers `--help`; every file a command or a relative link names exists. Commands that need
pretrained weights, data or hours are checked this way; the Quickstart test command is what .ci/run runs."""

import argparse
import importlib
import importlib.util
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
OUR_PACKAGES = ("humandiff", "data_pipelines")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def commands(text: str) -> list[list[str]]:
    """Each simple command of the ```bash blocks as tokens (comments dropped; split at &&, ||, ;, |)."""
    out = []
    for block in bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            tokens, current = shlex.split(line, comments=True), []
            for token in tokens + ["&&"]:
                if token in ("&&", "||", ";", "|"):
                    if current:
                        out.append(current)
                    current = []
                else:
                    current.append(token)
    return out


def module_commands(text: str) -> list[tuple[str, list[str]]]:
    """`(module, args)` of every `python -m <our module> ...` command (leading VAR=value assignments skipped)."""
    found = []
    for cmd in commands(text):
        while cmd and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]):
            cmd = cmd[1:]
        if len(cmd) >= 3 and cmd[0] == "python" and cmd[1] == "-m" and cmd[2].split(".")[0] in OUR_PACKAGES:
            found.append((cmd[2], cmd[3:]))
    return found


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def argparse_parser(module: str) -> argparse.ArgumentParser:
    """The parser `module.main` builds, captured at its first `parse_args` call (nothing else runs)."""
    mod = importlib.import_module(module)
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        mod.main([])
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{module}.main never parsed its arguments")


def flag_names(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def check_argparse(module: str, args: list[str]) -> None:
    parser = argparse_parser(module)
    known = set(parser._option_string_actions)  # noqa: SLF001  (argparse keeps no public list)
    unknown = [f for f in flag_names(args) if f not in known]
    assert not unknown, f"README: python -m {module} has no flag {unknown} (it has {sorted(known)})"
    try:
        parser.parse_args(args)
    except SystemExit as e:
        raise AssertionError(f"README: python -m {module} {shlex.join(args)} does not parse (exit {e.code})") from None
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--help"])
    assert e.value.code == 0


def check_train(args: list[str]) -> None:
    """humandiff.train's absl flags; `--config FILE[:ARGS]` must name a config that builds, and each
    `--config.<key>=<value>` a key of it."""
    importlib.import_module("humandiff.train")
    from absl import flags  # noqa: PLC0415

    from humandiff import config_lib  # noqa: PLC0415

    values = {}
    for i, a in enumerate(args):
        if a.startswith("--"):
            name, _, value = a.partition("=")
            values[name] = value if value or i + 1 >= len(args) or args[i + 1].startswith("--") else args[i + 1]
    config = None
    for name, value in values.items():
        if name == "--config":
            path, _, arg = value.partition(":")
            assert os.path.isfile(os.path.join(ROOT, path)), f"README: no config file {path}"
            config = config_lib.load_sibling(os.path.join(ROOT, "configs", "x.py"), os.path.basename(path)[:-3])
            config = config.get_config(arg or None)
        elif name.startswith("--config."):
            assert config is not None, "README: --config.<key> before --config"
            node = config
            for part in name[len("--config."):].split("."):
                assert part in node, f"README: the config has no {name[2:]}"
                node = node[part]
        else:
            assert name[2:] in flags.FLAGS, f"README: python -m humandiff.train has no flag {name}"
    assert "--config" in values and "--workdir" in values


def test_readme_commands_found():
    cmds = module_commands(open(README).read())
    modules = {m for m, _ in cmds}
    # The tasks the README covers: a command for each must be there (and is checked below).
    for m in ("humandiff.train", "humandiff.sample", "humandiff.export", "humandiff.evaluate",
              "humandiff.training.evals", "humandiff.app", "data_pipelines.build", "data_pipelines.pose.extract"):
        assert m in modules, m


@pytest.mark.parametrize("index", range(len(module_commands(open(README).read()))))
def test_readme_module_command(index):
    module, args = module_commands(open(README).read())[index]
    assert importlib.util.find_spec(module) is not None, f"README: no module {module}"
    if module == "humandiff.train":
        check_train(args)
    else:
        check_argparse(module, args)


def test_readme_other_commands():
    """pip installs name extras setup.py has; the notebook command names the notebook; the test command is .ci/run's."""
    text = open(README).read()
    setup = open(os.path.join(ROOT, "setup.py")).read()
    for cmd in commands(text):
        if cmd[:2] == ["pip", "install"]:
            for arg in cmd[2:]:
                extra = re.fullmatch(r"-e|\.|\.\[(\w+)\]|torch==[\w.]+", arg)
                assert extra, f"README: unexpected pip argument {arg}"
                if extra.group(1):
                    assert f'"{extra.group(1)}":' in setup, f"README: setup.py has no extra [{extra.group(1)}]"
        if "jupyter" in cmd:
            assert cmd[cmd.index("jupyter") + 1] == "execute"
            assert os.path.isfile(os.path.join(ROOT, cmd[-1])), cmd[-1]
    test_command = 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest -n auto'
    assert test_command in bash_blocks(text)[1]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    block = ci.split("# --- the README's test command, verbatim ---\n", 1)[1].split("\n", 1)[0]
    assert block == test_command


def test_readme_links():
    """Every relative link of README.md and docs/results.md points to an existing file."""
    for doc in (README, os.path.join(ROOT, "docs", "results.md")):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", open(doc).read()):
            if not re.match(r"^[a-z]+://", target):
                path = os.path.normpath(os.path.join(os.path.dirname(doc), target))
                assert os.path.exists(path), f"{os.path.relpath(doc, ROOT)}: broken link {target}"
