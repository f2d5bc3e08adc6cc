"""Orbax checkpointing for training: async, keep-N, exact resume, preemption-safe.

Layout under `<workdir>/checkpoints/<step>/`: `state/` (trainable params, EMA, optimizer state, step) and
`data_iter/` (the grain iterator state, one JSON per process). Frozen parameters are not part of the step
checkpoints: those loaded from pretrained folders are reloaded from there; the rest (random init, earlier-stage
weights) are written once to `<workdir>/frozen/`.

A checkpoint that exists but cannot be restored is an error naming the directory, never a silent fresh start.
SIGTERM sets a flag (`stop_requested`); the loop then saves and exits. `reached_preemption(step)` asks Orbax
whether the cluster's preemption service has signalled.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(ValueError):
    """A checkpoint directory exists but cannot be restored (bad input: `humandiff.cli` reports it in one line)."""


# What Orbax raises for a missing, partial or mismatched checkpoint (OSError covers FileNotFoundError).
_READ_ERRORS = (ValueError, KeyError, TypeError, OSError)


def restore_to_host(directory: str) -> Any:
    """The pytree saved in `directory` (a step's `state/`, or `frozen/`) as numpy arrays, whatever device topology
    saved it: a run on 2 CPU devices or 64 TPU chips is read the same way by a one-device export or a later stage.
    (Orbax's own restore without a target tree insists on the saving topology.)

    Raises:
      CheckpointError: naming `directory`, when it cannot be read.
    """
    from etils import epath  # noqa: PLC0415  (Orbax's path type)

    try:
        # The handler's tree metadata (an empty or half-copied folder raises FileNotFoundError), not the
        # checkpointer's: that one also looks for a step-level file a step's `state/` lacks, and warns every time.
        meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(directory))
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta.tree)
        with ocp.PyTreeCheckpointer() as ckptr:
            return ckptr.restore(directory, args=ocp.args.PyTreeRestore(restore_args=args))
    except _READ_ERRORS as e:
        raise CheckpointError(f"cannot read the checkpoint in {directory}: {type(e).__name__}: {e}") from e


class Checkpointer:
    """Thin wrapper around `ocp.CheckpointManager` for the train state and the data iterator.

    Args:
      workdir: training working directory; checkpoints go to `<workdir>/checkpoints`.
      every: steps between checkpoints (`should_save`).
      keep: number of step checkpoints kept.
      async_save: write in a background thread (the next step overlaps with the write).
    """

    def __init__(self, workdir: str, every: int, keep: int, async_save: bool = True):
        self.workdir = os.path.abspath(workdir) if "://" not in workdir else workdir
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.frozen_directory = os.path.join(self.workdir, "frozen")
        self.every = every
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._stop = threading.Event()
        self._previous_handler = None

    # --- save / restore ----------------------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """True every `every` steps (Orbax's own policy would also save the very first step)."""
        return step % self.every == 0 and self.manager.latest_step() != step

    def save(self, step: int, state: Any, data_iter: Any = None, force: bool = False) -> bool:
        """Saves `state` (and the grain iterator) at `step`; returns whether a save was started."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Any, data_iter: Any = None, step: int | None = None) -> tuple[Any, int] | None:
        """Restores the newest (or given) checkpoint into `abstract_state`'s shardings, and the iterator in place.

        Args:
          abstract_state: tree of `jax.ShapeDtypeStruct` with shardings (what `restore` should produce).
          data_iter: grain iterator whose state is overwritten with the saved one (None: not restored).
          step: step to restore (default: latest).

        Returns:
          `(state, step)`, or None when the directory holds no checkpoint (a fresh start).

        Raises:
          CheckpointError: a checkpoint exists but cannot be read into the expected structure.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except _READ_ERRORS as e:
            raise CheckpointError(
                f"cannot restore checkpoint step {step} from {self.directory}: {type(e).__name__}: {e}. "
                "Refusing to start from scratch; move the directory away to start fresh.") from e
        return restored["state"], step

    def save_frozen_once(self, frozen: Any) -> None:
        """Writes the frozen parameters to `<workdir>/frozen` unless already there."""
        if not jax.tree_util.tree_leaves(frozen) or os.path.exists(self.frozen_directory):
            return
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(self.frozen_directory, frozen)

    def restore_frozen(self, abstract_frozen: Any) -> Any | None:
        """The frozen parameters saved by `save_frozen_once`, or None if none were saved."""
        if not jax.tree_util.tree_leaves(abstract_frozen) or not os.path.exists(self.frozen_directory):
            return None
        try:
            with ocp.StandardCheckpointer() as ckptr:
                return ckptr.restore(self.frozen_directory, abstract_frozen)
        except _READ_ERRORS as e:
            raise CheckpointError(f"cannot restore frozen parameters from {self.frozen_directory}: {e}") from e

    def wait(self) -> None:
        """Blocks until async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, releases the manager and restores the previous SIGTERM handler."""
        self.manager.wait_until_finished()
        self.manager.close()
        self.uninstall_sigterm_handler()

    # --- preemption ---------------------------------------------------------------------------------------------

    def install_sigterm_handler(self) -> None:
        """SIGTERM sets `stop_requested`; the loop saves and exits cleanly (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            logging.warning("not in the main thread: SIGTERM handler not installed")
            return

        def handler(signum, frame):  # noqa: ARG001 - signal handler signature
            logging.warning("SIGTERM received: will checkpoint and exit after this step")
            self._stop.set()

        self._previous_handler = signal.signal(signal.SIGTERM, handler)

    def uninstall_sigterm_handler(self) -> None:
        """Puts back the handler that was there before `install_sigterm_handler`."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def stop_requested(self, step: int) -> bool:
        """True after SIGTERM on any process, or when the preemption service says this step is a sync point.

        With several processes the SIGTERM flag is all-gathered so that every process saves (a collective) and
        stops at the same step.
        """
        flag = self._stop.is_set()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            flag = bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
        return flag or bool(self.manager.reached_preemption(step))
