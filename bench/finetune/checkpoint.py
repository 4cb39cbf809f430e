"""Training checkpoints: written atomically (a temporary name, then a rename), read back or found damaged.

A checkpoint holds the model, the optimiser, the scheduler, every random generator's state, the step
and the cost spent so far; a SIGTERM (a cluster's preemption) is noted and acted on at the end of the
current step: a checkpoint is written, then the signal goes on to whoever handled it before.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import random
import signal
from pathlib import Path

import numpy as np
import torch

from bench import UserError, temps

log = logging.getLogger(__name__)


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save(path: Path, state: dict) -> None:
    """Write `state` atomically (bench.temps: a full disk or a read-only folder is one sentence)."""
    with temps.atomic(path, "fine-tuning checkpoint") as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load(path: Path) -> dict | None:
    """The checkpoint at `path`, or None when there is none or it is damaged (then it is removed).
    Temporary files that a killed process left beside it are removed too."""
    temps.sweep(path.parent)
    if not path.exists():
        return None
    try:
        # our own file: it holds numpy's and Python's generator states, which weights_only refuses
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        log.warning("the checkpoint %s is damaged (%s); starting this training run again", path, err)
        path.unlink(missing_ok=True)
        return None


class Preempted(UserError):
    """A SIGTERM arrived and the checkpoint was written (one sentence if the signal is otherwise ignored)."""


@contextlib.contextmanager
def sigterm_noted():
    """Yield a dict whose "at" turns True when a SIGTERM arrives; restore the previous handler after."""
    flag = {"at": False}
    previous = signal.getsignal(signal.SIGTERM)

    def note(signum, frame):
        flag["at"] = True

    try:
        signal.signal(signal.SIGTERM, note)
    except ValueError:  # not the main thread: no handler, a SIGTERM ends the run as before
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
        if flag["at"]:
            log.warning("SIGTERM: the checkpoint is written; the same command resumes from it")
            signal.raise_signal(signal.SIGTERM)  # now to the previous handler (by default: end the process)
