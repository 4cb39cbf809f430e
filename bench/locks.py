"""Locks between jobs, on one machine or many: a lease file (`filelock.SoftFileLease`) that names its holder
(pid and host), is renewed by a thread while held, removed on release, and taken over when its holder is gone:
at once when it was a process of this host, after `stale_s` seconds without a renewal otherwise (kill -9, a
lost node). A lease file works on a network file system, where `flock` may not. The feature cache's entries,
a run's claim on its cell and downloads are held with it.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import SoftFileLease, Timeout

log = logging.getLogger(__name__)


def holder(lock_path: str) -> str:
    """'pid 123 on node7', read from a lock file, or 'another job' when it cannot be read."""
    try:
        from filelock._soft import parse_marker, read_lock_file  # filelock's reader of its own lease files

        record = parse_marker(read_lock_file(lock_path)[0])
    except (ImportError, OSError, ValueError):
        record = None
    return f"pid {record.pid} on {record.hostname}" if record else "another job"


@contextmanager
def hold(lock_path: str, *, stale_s: float, what: str):
    """Hold the lock at `lock_path` (a lease renewed every stale_s / 3 seconds while held); say who holds it
    while waiting. A dead holder on this host is replaced at once, one on another host after stale_s seconds
    without a renewal (kill -9, a lost node): every job sharing the cache must use the same stale_s."""
    lock = SoftFileLease(lock_path, lease_duration=stale_s)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        waiting, start = None, time.monotonic()
        while True:
            if (who := holder(lock_path)) != waiting:
                log.info("waiting for %s to finish %s (its lock is taken over after %g s without renewal)",
                         who, what, stale_s)
                waiting = who
            try:
                lock.acquire(timeout=min(30.0, stale_s), poll_interval=0.2)
                break
            except Timeout:
                continue
        log.info("took the lock of %s after %.1f s", what, time.monotonic() - start)
    try:
        yield
    finally:
        lock.release()


def tidy(lock_path: str, *, stale_s: float) -> bool:
    """Remove a lease file its holder left (a kill between finishing the work and releasing the lock): taken
    and released at once when its holder is gone, left alone when a live job holds it. True if removed."""
    if not Path(lock_path).exists():
        return False
    lock = SoftFileLease(lock_path, lease_duration=stale_s)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    log.info("removed the lock %s that a job which is gone left behind", lock_path)
    return True
