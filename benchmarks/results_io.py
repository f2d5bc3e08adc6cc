"""Shared by the benchmarks that keep several results in one JSON file: machine description and keyed merge."""

from __future__ import annotations

import json
import os
import platform


def machine() -> dict:
    """Backend, first device, CPU, core count, load average and JAX version of this run."""
    import jax

    return {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_avg": os.getloadavg(),
            "jax": jax.__version__}


def merge_into(path: str, key: str, result: dict) -> None:
    """Stores `result` under `key` in the JSON object at `path`, keeping the other keys (file created if absent)."""
    existing = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            existing = json.load(fh)
    existing[key] = result
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(existing, fh, indent=2)
