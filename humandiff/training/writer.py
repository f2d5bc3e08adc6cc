"""Metric and image writer: TensorBoard events (tensorboardX, no TensorFlow) on process 0, no-op elsewhere."""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np


def _import_summary_writer():
    """`tensorboardX.SummaryWriter` without letting tensorboardX import torch.

    tensorboardX imports torch whenever it is installed (only to recognise torch tensors). In a training process
    that is ~1 GB of memory for nothing, and loading it after a large XLA compile crashed once with "Intel oneMKL
    FATAL ERROR: Cannot load libtorch_cpu.so". A `None` entry in sys.modules makes that optional import fail
    cleanly; the entry is removed again so later code can still import torch.
    """
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Scalars and images to `<logdir>` as TensorBoard events; silent on processes other than 0."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() == 0:
            SummaryWriter = _import_summary_writer()
            os.makedirs(logdir, exist_ok=True)
            self._writer = SummaryWriter(logdir, flush_secs=30)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes each scalar under its name at `step`."""
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, float(value), step)

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """Writes one uint8 `[H, W, 3]` image."""
        if self._writer is not None:
            self._writer.add_image(name, np.asarray(image), step, dataformats="HWC")

    def flush(self) -> None:
        """Flushes pending events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()
