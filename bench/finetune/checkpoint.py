"""Training checkpoints: written atomically (a temporary name, then a rename), read back or found damaged.

A checkpoint holds the model, the optimiser, the scheduler, every random generator's state, the step
and the cost spent so far; a SIGTERM (a cluster's preemption) is noted and acted on at the end of the
current step: a checkpoint is written, then the signal goes on to whoever handled it before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
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


MAGIC = b"seabench-checkpoint sha256="  # a checkpoint file: this, the sha256 of the rest, a newline, torch's bytes


def save(path: Path, state: dict) -> None:
    """Write `state` atomically (bench.temps: a full disk or a read-only folder is one sentence), headed by the
    sha256 of its bytes, so that a flipped bit is found on load instead of resumed from."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    with temps.atomic(path, "fine-tuning checkpoint") as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        f.write(payload)


def damage(data: bytes) -> str | None:
    """None for a sound checkpoint file's bytes, else what is wrong with them."""
    head, newline, payload = data.partition(b"\n")
    if not (head.startswith(MAGIC) and newline):
        return "it has no checksum header (not written by this seabench)"
    if head[len(MAGIC):].decode("ascii", "replace") != hashlib.sha256(payload).hexdigest():
        return "its bytes do not match their checksum"
    return None


def load(path: Path) -> dict | None:
    """The checkpoint at `path`, or None when there is none or it is damaged (then it is set aside as
    `<name>.damaged`, named in one log line, and the caller trains again). Temporary files that a killed
    process left beside it are removed too."""
    temps.sweep(path.parent)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    problem = damage(data)
    if problem is None:
        try:
            # our own file: it holds numpy's and Python's generator states, which weights_only refuses
            return torch.load(io.BytesIO(memoryview(data)[data.index(b"\n") + 1:]), map_location="cpu",
                              weights_only=False)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
            problem = f"it cannot be read ({err})"
    temps.set_aside(path, problem, "fine-tuning checkpoint", "training again")
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
