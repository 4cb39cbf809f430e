"""Temporary files: the one home of atomic writes (temporary name in the same folder, then a rename).

A temporary's name carries the host and the process id that writes it (`.x.json.tmp-node7-4242`), so
that one whose process is gone (a job killed with SIGKILL, a machine that rebooted) is recognised and
removed by `sweep`, which runs before every write into a folder. Only this host's temporaries are
swept: whether a process on another host is alive cannot be asked from here. The temporaries of the
running process are remembered until renamed, so that a signal handler can remove them (`remove_own`).
Every OSError of a write (a full disk, a read-only folder, a path through a file) becomes one sentence.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import UserError

log = logging.getLogger(__name__)

HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"  # no '-': the pid follows the last one
PATTERN = re.compile(r"\.tmp-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)$")
OWN: set[Path] = set()  # this process's temporaries not yet renamed

HINTS = {errno.ENOSPC: "free some space and run again", errno.EDQUOT: "free some space and run again",
         errno.EROFS: "the folder is read-only; choose a writable one",
         errno.EACCES: "no permission to write there; choose a writable folder",
         errno.EPERM: "no permission to write there; choose a writable folder",
         errno.ENOTDIR: "a part of that path is a file, not a folder"}


def why(path: Path, err: OSError, what: str = "") -> str:
    """One sentence for a failed write: which file, the system's reason, what to do."""
    reason = err.strerror or str(err)
    hint = HINTS.get(err.errno)
    where = os.path.abspath(path)
    return f"cannot write {what + ' ' if what else ''}{where}: {reason}" + (f"; {hint}" if hint else "")


def disk_fault(err: BaseException) -> OSError | None:
    """The disk fault (an OSError with a hint) behind `err`: itself, or one that a library raised over it.
    torch's zip writer is such a library: when a write into its file fails with ENOSPC, its `__exit__`
    raises RuntimeError('[enforce fail at inline_container.cc] unexpected pos ...') over the OSError."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in HINTS:
            return err
        seen.add(id(err))
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)  # `from None` ends it
    return None


@contextmanager
def faults_as_sentences() -> Iterator[None]:
    """A disk fault (full, read-only, no permission, a file in a path) met outside `atomic` -- a lock file, a
    folder made by a library -- becomes one sentence too; other errors pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as raised:
        if (err := disk_fault(raised)) is None:
            raise
        where = f" {os.path.abspath(err.filename)}" if err.filename else ""
        raise UserError(f"cannot use{where}: {err.strerror}; {HINTS[err.errno]}") from None


def name_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep(folder: Path) -> list[Path]:
    """Remove the temporaries in `folder` left by processes of this host that are gone; return them."""
    removed = []
    try:
        names = [p for p in Path(folder).iterdir() if ".tmp-" in p.name]
    except OSError:
        return removed
    for p in names:
        match = PATTERN.search(p.name)
        if match and match["host"] == HOST and not alive(int(match["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left in %s by processes that are gone", len(removed), folder)
    return removed


def make_dir(folder: Path, what: str = "folder") -> Path:
    """`folder` (created if needed), or one sentence saying why it cannot be."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(why(Path(folder), err, what)) from None
    return Path(folder)


def check_writable(folder: Path, what: str) -> None:
    """Fail now, in one sentence, if nothing can be written in `folder`: before the work, not after it."""
    folder = make_dir(Path(folder).expanduser(), what)
    probe = name_for(folder / ".seabench-write-check")
    try:
        probe.write_bytes(b"")
    except OSError as err:
        raise UserError(why(folder, err, what)) from None
    finally:
        probe.unlink(missing_ok=True)


@contextmanager
def atomic(path: Path, what: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; rename it to `path` when the block ends without error.

    No temporary outlives the block, whatever ends it (an error, Ctrl-C, SIGTERM turned into an exception)."""
    path = Path(path)
    make_dir(path.parent, what + " folder" if what else "folder")
    sweep(path.parent)
    tmp = name_for(path)
    OWN.add(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(why(path, err, what)) from None
    except Exception as raised:  # a library's error over a failed write (torch.save on a full disk)
        if (err := disk_fault(raised)) is None:
            raise
        raise UserError(why(path, err, what)) from None
    finally:
        OWN.discard(tmp)
        tmp.unlink(missing_ok=True)


def remove_own() -> None:
    """Remove this process's temporaries (from a signal handler's path, where no `finally` may run)."""
    for tmp in list(OWN):
        tmp.unlink(missing_ok=True)
        OWN.discard(tmp)


def set_aside(path: Path, why: str, what: str, then: str = "making it again") -> Path | None:
    """Rename a damaged file (a record, a checkpoint, a cache entry) to `<name>.damaged`: kept for a look,
    no longer read; one log line names it. The caller makes it again. None when it cannot be renamed (a
    read-only folder): then it stays, named in the log line, and is overwritten when made again."""
    aside = Path(path).with_name(Path(path).name + ".damaged")
    try:
        os.replace(path, aside)
    except OSError as err:
        log.warning("the %s %s cannot be used (%s) and could not be set aside (%s)", what, path, why, err)
        return None
    log.warning("the %s %s cannot be used (%s): set aside as %s, %s", what, path, why, aside.name, then)
    return aside
