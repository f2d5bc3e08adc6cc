"""Reading weight folders from local disk: config.json, safetensors, opt-in pickle, key validation.

Nothing here downloads. Pickle files (`.bin`, `.ckpt`, `.pth`, `.pt`) can execute code when loaded, so they are
refused unless the caller passes `allow_pickle=True`; then they are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt")
SAFETENSORS_SUFFIX = ".safetensors"


class WeightsError(ValueError):
    """A weight folder or file that cannot be used as it is; the message names the file and key."""


def read_config(path: str) -> dict[str, Any]:
    """Reads a `config.json` (or the one inside a folder) with errors that name the file."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise WeightsError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"malformed JSON in {path}: {e}") from e
    if not isinstance(config, dict):
        raise WeightsError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _prefer_plain(names: list[str], suffixes: tuple[str, ...]) -> list[str]:
    """Drops precision variants (`model.fp16.safetensors`) when plain files (`model.safetensors`) are present."""
    plain = [n for n in names if "." not in n[: -len(next(s for s in suffixes if n.endswith(s)))]]
    return plain or names


def _weight_files(folder: str) -> tuple[list[str], list[str]]:
    names = sorted(os.listdir(folder))
    safe = _prefer_plain([n for n in names if n.endswith(SAFETENSORS_SUFFIX)], (SAFETENSORS_SUFFIX,))
    pickles = _prefer_plain([n for n in names if n.endswith(PICKLE_SUFFIXES)], PICKLE_SUFFIXES)
    return [os.path.join(folder, n) for n in safe], [os.path.join(folder, n) for n in pickles]


def _load_pickle(path: str, allow_pickle: bool) -> dict[str, np.ndarray]:
    if not allow_pickle:
        raise WeightsError(
            f"{path} is a pickle file, which can run arbitrary code when loaded; convert it to safetensors, "
            "or pass allow_pickle=True (it is then read with torch.load(weights_only=True))"
        )
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise WeightsError(f"reading {path} needs torch: pip install 'humandiff[torch]'") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise WeightsError(f"could not read {path} with torch.load(weights_only=True): {e}") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    out = {}
    for key, value in obj.items():
        if hasattr(value, "detach"):
            out[key] = value.detach().float().numpy() if value.dtype == torch.bfloat16 else value.detach().numpy()
    return out


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    try:
        return dict(load_file(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"could not read safetensors file {path}: {e}") from e
    except TypeError as e:  # bf16 tensors have no numpy dtype: read them through torch if present
        try:
            from safetensors.torch import load_file as load_torch  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise WeightsError(f"{path} holds dtypes numpy cannot read ({e}); install torch to read it") from e
        return {k: v.float().numpy() for k, v in load_torch(path).items()}


def read_state_dict(path: str, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads a torch-style state dict from a weight file or a folder of them.

    A folder is read from all of its `*.safetensors` files (sharded checkpoints included; precision variants
    such as `*.fp16.safetensors` only when no plain file is there); pickle files are used only when no
    safetensors file is there and `allow_pickle` is set.

    Args:
      path: a `.safetensors` / pickle file, or a folder holding them.
      allow_pickle: opt in to reading pickle files with `torch.load(weights_only=True)`.

    Returns:
      Flat dict from torch parameter names to numpy arrays.
    """
    if os.path.isdir(path):
        safe, pickles = _weight_files(path)
        if safe:
            out: dict[str, np.ndarray] = {}
            for f in safe:
                out.update(_load_safetensors(f))
            return out
        if pickles:
            out = {}
            for f in pickles:
                out.update(_load_pickle(f, allow_pickle))
            return out
        raise WeightsError(f"no weight file (*.safetensors, or pickle with opt-in) in folder {path}")
    if not os.path.isfile(path):
        raise WeightsError(f"weights not found: {path}")
    if path.endswith(SAFETENSORS_SUFFIX):
        return _load_safetensors(path)
    if path.endswith(PICKLE_SUFFIXES):
        return _load_pickle(path, allow_pickle)
    raise WeightsError(f"unknown weight file type: {path} (expected .safetensors, or .bin/.ckpt/.pth with opt-in)")


def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Flattens a nested dict to `{"a/b/c": leaf}`."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for sub, leaf in flatten(value, sep).items():
                out[f"{key}{sep}{sub}"] = leaf
        else:
            out[key] = value
    return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """Inverse of `flatten`."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def validate(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], source: str,
             spell: Callable[[str], str] | None = None) -> None:
    """Compares parameter names and shapes; raises one error that lists every problem by name.

    Args:
      expected: name -> shape the model needs.
      got: name -> shape that was read (after key mapping).
      source: the file or folder, named in the message.
      spell: our name -> the name as the user's file spells it (e.g. `time_embedding.linear_2.weight` for
        `time_embedding/linear_2/kernel`); each problem then names both, the file's first.
    """

    def name(key: str) -> str:
        return f"{spell(key)} ({key})" if spell is not None else key

    missing = sorted(name(k) for k in set(expected) - set(got))
    unexpected = sorted(name(k) for k in set(got) - set(expected))
    mismatched = sorted(
        f"{name(k)}: expected {tuple(expected[k])}, got {tuple(got[k])}"
        for k in set(expected) & set(got)
        if tuple(expected[k]) != tuple(got[k])
    )
    if not (missing or unexpected or mismatched):
        return
    lines = [f"weights in {source} do not match the model:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
    raise WeightsError("\n".join(lines))
