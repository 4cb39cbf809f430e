"""What a sweep's cell leaves beside its record: a marker while it runs, the reason when it fails.

A cell is identified by the hash of its signed config (backbone, dataset, method, protocol, seeds), which is
known before any work, so a run that fails before its record's signature exists (a dataset not on disk)
still says so where `seabench status` looks: `runs/<dataset>/<backbone>/<method>-<protocol>-cell-<key>`
+ `.running` (JSON: host, pid, job, start; its mtime is a heartbeat) or `.failed` (JSON: the reason).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from bench import UserError, results

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0  # a running cell touches its marker this often
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
    """Mark the cell running (with a heartbeat) while the block runs; the marker goes when it ends."""
    path = stem(config).with_suffix(".running")
    results.write_text(path, json.dumps({**whoami(), "start": time.time()}))
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
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


def state(config: dict, done: dict[str, str]) -> tuple[str, str]:
    """(done | running | failed | missing, detail) of one cell; `done` maps cell keys to record paths."""
    if (record := done.get(results.cell_key(config))) is not None:
        return "done", record
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
        return ("failed", failure["reason"]) if failure else ("missing", stopped)
    if (failure := read(base.with_suffix(".failed"))) is not None:
        return "failed", failure.get("reason", "no reason recorded")
    return "missing", ""


def records(results_dir: Path) -> dict[str, str]:
    """Cell key -> record path, for every record under results_dir (older records: keyed from their config)."""
    out = {}
    for record in results.load_all(Path(results_dir)):
        try:
            out[record.get("cell") or results.cell_key(record["config"])] = record["path"]
        except (KeyError, TypeError):  # not a record of a run (no config): nothing of a cell
            log.warning("%s is not a run record; status ignores it", record["path"])
    return out
