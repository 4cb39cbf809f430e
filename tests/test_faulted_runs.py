"""What held, keep it holding: signals, kill -9 at every stage, concurrent jobs, a table read during a sweep.

A driver runs the real command line (`bench.cli.main`) in a process of its own (harness.Child) with one
hold point patched in: at the chosen stage it touches a marker file and sleeps, so the test can signal or
kill it exactly there. The command run after the fault runs in the test's process.
"""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from harness import Child, own_env, seabench_in_process

from bench import features, results

CELL = ["dataset=digits", "backbone=pixels", "method=linear", "method.grid.penalty=[0.1,1.0]",
        "extract.num_workers=0"]

DRIVER = r"""
import pathlib, signal, sys, time
stage, marker = sys.argv[1], pathlib.Path(sys.argv[2])
# Ctrl-C as at a terminal, also when the tests were started with SIGINT ignored (a background job of a
# non-interactive shell is, and Python then installs no KeyboardInterrupt handler)
signal.signal(signal.SIGINT, signal.default_int_handler)

def hold():
    marker.touch()
    time.sleep(600)

if stage in ("extract", "slow-extract"):  # during the second split's extraction / every extraction slowed
    import bench.features as features
    real, calls = features.extract, []
    def extract(*args, **kwargs):
        calls.append(1)
        if stage == "extract" and len(calls) == 2:
            hold()
        time.sleep(2.0 if stage == "slow-extract" else 0)
        return real(*args, **kwargs)
    features.extract = extract
elif stage == "cache-write":  # half of an entry in its temporary
    import torch
    def save(obj, f):
        f.write(b"PK\x03\x04 half an entry")
        f.flush()
        hold()
    torch.save = save
elif stage == "after-cache-rename":  # the entry is in place, its lock not yet released
    import bench.features as features
    real_write_entry = features.write_entry
    def write_entry(path, entry):
        real_write_entry(path, entry)
        hold()
    features.write_entry = write_entry
elif stage == "fit":
    import bench.methods.linear as linear
    def fit_one(*args, **kwargs):
        hold()
    linear.fit_one = fit_one
elif stage == "record-write":  # half of the record in its temporary
    real_write_text = pathlib.Path.write_text
    def write_text(self, text, *args, **kwargs):
        if ".json.tmp-" in self.name:
            real_write_text(self, text[: len(text) // 2])
            hold()
        return real_write_text(self, text, *args, **kwargs)
    pathlib.Path.write_text = write_text
elif stage == "workers":  # inside a DataLoader worker process, reading an image
    import bench.data
    def getitem(self, i):
        hold()
    bench.data.ImageList.__getitem__ = getitem
from bench.cli import main
sys.exit(main(sys.argv[3:]))
"""


def env(tmp: Path) -> dict:
    return {"OMP_NUM_THREADS": "1", **own_env(tmp)}  # over this process's environment (harness.Child)


def start(tmp: Path, stage: str, *args: str, marker: Path | None = None) -> Child:
    """The driver in a process of its own and a new process group (as a scheduler's job is), held at `stage`."""
    marker = marker or tmp / "marker"
    return Child(DRIVER, [stage, marker, *args], cwd=tmp, env=env(tmp), new_session=True)


def wait_for(marker: Path, proc: Child, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended before the hold point: {proc.communicate()}")
        assert time.monotonic() < deadline, "the hold point was never reached"
        time.sleep(0.05)


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """The command after the fault, in this process: a new job on what the faulted one left behind."""
    return seabench_in_process(*args, cwd=tmp, env=own_env(tmp))


def temporaries(tmp: Path) -> list[Path]:
    return [p for p in tmp.rglob("*") if ".tmp-" in p.name]


def outcome(tmp: Path) -> dict:
    (path,) = (tmp / "results" / "runs").rglob("*.json")
    record = json.loads(path.read_text())
    return {k: record[k] for k in ("test", "curve", "chosen", "signature", "features", "sizes")} | {"path": path.name}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run(tmp, "run", *CELL)
    return outcome(tmp)


@pytest.mark.parametrize("stage", ["extract", "cache-write", "fit", "record-write"])
def test_kill_9_at_any_stage_then_a_rerun_matches_an_uninterrupted_run(tmp_path, uninterrupted, stage):
    proc = start(tmp_path, stage, "run", *CELL)
    wait_for(tmp_path / "marker", proc)
    proc.kill()
    proc.communicate()
    if stage in ("cache-write", "record-write"):
        assert temporaries(tmp_path)  # what kill -9 leaves: a half-written temporary, never a final name
    assert not (tmp_path / "results" / "runs").exists() or not list((tmp_path / "results" / "runs").rglob("*.json"))
    run(tmp_path, "run", *CELL)
    assert outcome(tmp_path) | {"features": None} == uninterrupted | {"features": None}
    assert temporaries(tmp_path) == []  # swept by the next write into their folder
    for entry in (tmp_path / "cache" / "features").rglob("*.pt"):  # every entry sound
        digest = next(e["key"] for e in outcome(tmp_path)["features"].values() if e["path"] == str(entry))
        assert features.read_entry(entry, digest)[1] is None


@pytest.mark.parametrize("stage,how,code,line", [
    ("fit", signal.SIGINT, 130, "seabench: interrupted;"),
    ("cache-write", signal.SIGTERM, 143, "seabench: terminated (SIGTERM); temporary files removed"),
    ("record-write", signal.SIGTERM, 143, "seabench: terminated (SIGTERM); temporary files removed"),
])
def test_a_signal_ends_in_one_line_and_leaves_no_temporary(tmp_path, stage, how, code, line):
    proc = start(tmp_path, stage, "run", *CELL)
    wait_for(tmp_path / "marker", proc)
    if stage != "fit":
        assert temporaries(tmp_path)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.startswith(line) and len(err.strip().splitlines()) == 1, err
    assert temporaries(tmp_path) == []
    assert list((tmp_path / "results").rglob("*.json")) == []


@pytest.mark.heavy
def test_concurrent_jobs_on_one_cold_cell_extract_once_and_agree(tmp_path):
    """8 jobs share the cache (each writes its own results folder, to compare their records); every
    extraction is slowed by 2 s so that they all meet at the lock."""
    procs = [start(tmp_path, "slow-extract", "run", *CELL, f"results_dir=r{i}", marker=tmp_path / f"m{i}")
             for i in range(8)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    logs = "".join(out + err for out, err in outs)
    for split in ("train", "val", "test"):
        assert logs.count(f"extracted digits {split}") == 1, logs
        assert logs.count(f"cache hit digits {split}") == 7, logs
    records = [json.loads(next((tmp_path / f"r{i}").rglob("*.json")).read_text()) for i in range(8)]
    keys = ("test", "curve", "chosen", "signature", "sizes")
    assert all({k: r[k] for k in keys} == {k: records[0][k] for k in keys} for r in records)
    assert {e["key"] for r in records for e in r["features"].values()} == \
        {e["key"] for e in records[0]["features"].values()}
    assert len(list((tmp_path / "cache" / "features").rglob("*.pt"))) == 3 and temporaries(tmp_path) == []


def test_the_table_never_reads_a_half_written_record(tmp_path, caplog):
    """A writer rewrites records (as a sweep's jobs do) while the table reads them, over and over."""
    base = {"backbone": "b", "method": "linear", "protocol": "selection", "dataset": "d", "metric": "top1",
            "chosen": {}, "edge": {}, "timings": {"fit": 1.0}, "created": "2026-01-01T00:00:00+00:00",
            "padding": "x" * 200_000}  # large enough that a write takes many system calls
    paths = [results.path_for(tmp_path, dataset="d", backbone=f"b{i}", method="linear", protocol="selection",
                              sig=f"{i:012d}") for i in range(4)]
    for path in paths:
        results.write(path, base | {"test": {"score": [0.0]}})
    stop, rounds = threading.Event(), [0]

    def writer():
        while not stop.is_set():
            for path in paths:
                results.write(path, base | {"test": {"score": [float(rounds[0])]}})
            rounds[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            assert len(results.load_all(tmp_path)) == len(paths)
    finally:
        stop.set()
        thread.join()
    assert rounds[0] > 5 and "skipping" not in caplog.text


def test_sigterm_to_a_job_with_loader_workers_is_one_line(tmp_path):
    """A scheduler signals every process of the job: the DataLoader's workers end too, and that is no error."""
    proc = start(tmp_path, "workers", "run", *CELL[:-1], "extract.num_workers=2")
    wait_for(tmp_path / "marker", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.startswith("seabench: terminated (SIGTERM)"), err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.heavy
def test_identical_runs_at_once_fit_the_cell_once_and_the_others_reuse_its_record(tmp_path):
    """Four identical runs in one results folder: one claims the cell (extracting, slowed by 2 s a split, and
    fitting), the others wait on its claim and then skip to the record it wrote."""
    procs = [start(tmp_path, "slow-extract", "run", *CELL, marker=tmp_path / f"m{i}") for i in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    logs = "".join(out + err for out, err in outs)
    assert logs.count("digits / pixels / linear: test top1") == 1, logs  # one fit, one record written
    assert logs.count("while this job waited for the cell, another wrote a record") == 3, logs
    assert "waiting for pid" in logs and "overwriting the record" not in logs
    assert len(list((tmp_path / "results").rglob("*.json"))) == 1
    assert not list((tmp_path / "results").rglob("*.claim")) and temporaries(tmp_path) == []


def test_the_claim_of_a_killed_run_is_taken_over_at_once(tmp_path):
    """kill -9 while fitting: its claim stays on disk; the next run sees its owner is dead, takes it over
    without waiting out the lease, and leaves no claim behind."""
    proc = start(tmp_path, "fit", "run", *CELL)
    wait_for(tmp_path / "marker", proc)
    (claim,) = (tmp_path / "results").rglob("*.claim")
    assert f"pid={proc.pid}" in claim.read_text()
    proc.kill()
    proc.communicate(timeout=60)
    start_s = time.monotonic()
    out = run(tmp_path, "run", *CELL, "extract.lock_stale_s=600")
    assert time.monotonic() - start_s < 120 and "test top1" in out.stdout + out.stderr
    assert not claim.exists() and len(list((tmp_path / "results").rglob("*.json"))) == 1


def test_a_kill_between_an_entrys_rename_and_its_locks_release_leaves_no_lock_behind(tmp_path):
    proc = start(tmp_path, "after-cache-rename", "run", *CELL)
    wait_for(tmp_path / "marker", proc)
    (lock,) = (tmp_path / "cache" / "features").rglob("*.lock")
    proc.kill()
    proc.communicate(timeout=60)
    assert lock.exists()  # what kill -9 leaves: the entry beside its dead writer's lock
    run(tmp_path, "run", *CELL)
    assert not list((tmp_path / "cache").rglob("*.lock")) and temporaries(tmp_path) == []
    assert len(list((tmp_path / "results").rglob("*.json"))) == 1
