"""What a sweep's cell leaves beside its record: a marker while it runs, the reason when it fails.

A cell is identified by the hash of its signed config (backbone, dataset, method, protocol, seeds), which is
known before any work, so a run that fails before its record's signature exists (a dataset not on disk)
still says so where `seabench status` looks: `runs/<dataset>/<backbone>/<method>-<protocol>-cell-<key>`
+ `.running` (JSON: host, pid, job, start; its mtime is a heartbeat) or `.failed` (JSON: the reason).
A `.running` marker whose job is gone is removed once the cell has a record (`tidy`).
"""

from __future__ import annotations

import _thread
import json
import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from bench import UserError, results

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0  # a running cell touches its marker this often
WATCH_S = 1.0  # under a local launcher, a job looks this often whether its sweep still runs
SWEEP_ENV = "SEABENCH_SWEEP_PID"  # set by `seabench run -m` under a local launcher: the sweep's process
STALE_S = 120.0  # a marker from another host untouched this long is a job that died (kill -9, node lost)


def stem(config: dict) -> Path:
    """Where a cell's markers live: next to its record, named by the cell's key."""
    return (Path(config["results_dir"]) / "runs" / config["dataset"]["name"] / config["backbone"]["name"]
            / f"{config['method']['name']}-{config['protocol']['name']}-cell-{results.cell_key(config)[:12]}")


def whoami() -> dict:
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": job}


@contextmanager
def running(config: dict):
    """Mark the cell running (with a heartbeat) while the block runs; the marker goes when it ends. Under a
    local launcher (`SWEEP_ENV` names the sweep's process), a job whose sweep is gone (killed) stops too."""
    path = stem(config).with_suffix(".running")
    results.write_text(path, json.dumps({**whoami(), "start": time.time()}))
    stop = threading.Event()
    sweep = int(os.environ[SWEEP_ENV]) if os.environ.get(SWEEP_ENV, "").isdigit() else None
    previous = watch_interrupts() if sweep not in (None, os.getpid()) else None
    watching = previous is not None

    def beat():
        last = time.monotonic()
        while not stop.wait(WATCH_S if watching else HEARTBEAT_S):
            if watching and gone(sweep):
                log.warning("the sweep that started this job (pid %d) is gone: stopping this job too (its cell "
                            "has no record; run the sweep again)", sweep)
                _thread.interrupt_main()  # a KeyboardInterrupt where the job is: every `finally` runs
                if not stop.wait(60.0):  # a job stuck in a call that ignores it
                    os._exit(130)
                return
            if time.monotonic() - last >= HEARTBEAT_S:
                last = time.monotonic()
                try:
                    os.utime(path)
                except OSError:  # the marker was removed (a reset results dir): nothing to keep alive
                    return

    thread = threading.Thread(target=beat, daemon=True, name="seabench-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        path.unlink(missing_ok=True)
        if watching:
            signal.signal(signal.SIGINT, previous)


def watch_interrupts():
    """Python's own SIGINT handler for the block (a job started with SIGINT ignored would not see
    `interrupt_main`); the handler it replaces, or None where none can be set (not the main thread)."""
    try:
        return signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:
        return None


def gone(pid: int) -> bool:
    """Whether process `pid` of this host has ended (a zombie, ended but not yet reaped, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False


def fail(config: dict, reason: str, overrides: list[str]) -> None:
    """Leave the cell's one-sentence failure reason beside where its record would be."""
    facts = {"reason": reason, "overrides": overrides, **whoami(), "time": time.time()}
    try:
        results.write_text(stem(config).with_suffix(".failed"), json.dumps(facts))
    except (OSError, UserError) as err:  # a read-only or full results dir: the sweep's report still names the cell
        log.warning("could not write the failure reason of this run: %s", err)


def succeed(config: dict) -> None:
    stem(config).with_suffix(".failed").unlink(missing_ok=True)


def alive(marker: dict, age_s: float) -> bool:
    """Whether the job that wrote a `.running` marker still runs: its pid on this host, else a fresh heartbeat."""
    if marker.get("host") == socket.gethostname():
        try:
            os.kill(int(marker["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
        else:
            return True
    return age_s < STALE_S


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def state(config: dict, done: dict[str, list[dict]], stale=None) -> tuple[str, str]:
    """(done | stale | running | failed | missing, detail) of one cell; `done` maps cell keys to their records
    (newest first, each with its "path"). `stale(config, record)` says why a record is not what a run would
    sign now (bench.job.checker: data, weights file, device), None when it is; without it every record of
    the cell counts. A record found stale leaves the cell `stale` unless a job runs it now."""
    found, why = done.get(results.cell_key(config), []), None
    for record in found:
        try:
            reason = stale(config, record) if stale else None
        except (UserError, OSError) as err:  # no data (or device) to compare with: the record stands, said so
            tidy(config)
            return "done", f"{record['path']} (not checked: {err})"
        if reason is None:
            tidy(config)
            return "done", record["path"]
        why = why or reason  # the newest record's
    base = stem(config)
    marker_path = base.with_suffix(".running")
    if (marker := read(marker_path)) is not None:
        try:
            age = time.time() - marker_path.stat().st_mtime
        except OSError:
            age = float("inf")
        since = int((time.time() - marker.get("start", time.time())) // 60)
        who = f"pid {marker.get('pid')} on {marker.get('host')}" + (f", job {marker['job']}" if marker.get("job") else "")
        if alive(marker, age):
            return "running", f"{who}, for {since} min"
        stopped = f"its job ({who}) stopped without a record"
        failure = read(base.with_suffix(".failed"))
        if failure:
            return "failed", failure["reason"]
        return ("stale", f"{found[0]['path']}: {why}") if found else ("missing", stopped)
    if (failure := read(base.with_suffix(".failed"))) is not None:
        return "failed", failure.get("reason", "no reason recorded")
    return ("stale", f"{found[0]['path']}: {why}") if found else ("missing", "")


def tidy(config: dict) -> None:
    """A done cell's leftover `.running` marker (its job killed after the record was written, or the cell run
    again outside the sweep) goes, unless its job still runs."""
    path = stem(config).with_suffix(".running")
    if (marker := read(path)) is None:
        return
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return
    if not alive(marker, age):
        path.unlink(missing_ok=True)


def records(results_dir: Path) -> dict[str, list[dict]]:
    """Cell key -> the cell's records under results_dir, newest first (older records: keyed from their config)."""
    out: dict[str, list[dict]] = {}
    for record in results.load_all(Path(results_dir)):
        try:
            key = record.get("cell") or results.cell_key(record["config"])
        except (KeyError, TypeError):  # not a record of a run (no config): nothing of a cell
            log.warning("%s is not a run record; status ignores it", record["path"])
            continue
        out.setdefault(key, []).append(record)
    for found in out.values():
        found.sort(key=lambda r: str(r.get("created")), reverse=True)
    return out
