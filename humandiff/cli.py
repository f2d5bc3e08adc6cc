"""The error convention of every `python -m` entry point (README, "Errors").

Bad input (a config, a file or a flag the user can fix) ends a command with ONE line on stderr,
`error: <what> in <file/key/value>: <why>[; <what to do>]`, and exit status 2; `--debug` prints the traceback
above that line. Any other exception is a bug and keeps its traceback (Python's exit status 1).

    parser = cli.ArgumentParser(description=...)   # adds --debug; a bad flag is one `error:` line too
    args = parser.parse_args(argv)
    with cli.errors(args.debug):
        ...

A leaf module: it imports no other humandiff module, so every CLI (and `data_pipelines`) can use it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Iterable, Iterator

from PIL import UnidentifiedImageError

BAD_INPUT = 2  # exit status of a command refused for its input

# What library code raises for input a person can fix. Our own kinds are ValueError subclasses (config_lib's
# ConfigError, media's BadInputError, weights' WeightsError, export's ExportError, checkpoint's CheckpointError);
# json.JSONDecodeError is a ValueError too; PIL's UnidentifiedImageError is an OSError. Other OSErrors (disk full,
# I/O errors) and every other exception type are not expected: they keep their traceback.
EXPECTED = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
            UnidentifiedImageError)


def message(error: BaseException) -> str:
    """`error` as the one line after `error: ` (an OS error as "<why>: <file>"; line breaks become "; ")."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.strerror}: {error.filename}"  # open()'s "[Errno 2] No such file ..." without the errno
    else:
        text = str(error) or type(error).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()).replace(":; ", ": ")


def report(error: BaseException, debug: bool = False) -> None:
    """Prints the one `error:` line of `error` to stderr (its traceback first with `debug`)."""
    if debug:
        traceback.print_exception(error)
    print(f"error: {message(error)}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def errors(debug: bool = False) -> Iterator[None]:
    """Turns an expected error of the body into one `error:` line and `SystemExit(2)`; others pass through.

    Args:
      debug: also print the traceback (the `--debug` flag).

    Raises:
      SystemExit: with status 2, after printing the line.
    """
    try:
        yield
    except EXPECTED as e:
        report(e, debug)
        raise SystemExit(BAD_INPUT) from None


def refuse_existing(paths: Iterable[str], overwrite: bool) -> None:
    """Nothing a user had is replaced unasked: raises `FileExistsError` naming the first of `paths` that exists,
    unless `overwrite` (the command's `--overwrite` flag)."""
    for path in () if overwrite else paths:
        if os.path.lexists(path):
            raise FileExistsError(f"output already exists in {path}: not replaced; pass --overwrite to replace it, "
                                  "or choose another output path")


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with a `--debug` flag, whose own errors (a bad or missing flag) are one line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="on an error, show its traceback too")

    def error(self, message: str):  # noqa: D102  (argparse's hook; prints usage + two lines by default)
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr, flush=True)
        raise SystemExit(BAD_INPUT)
