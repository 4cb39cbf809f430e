"""Sweeps as a cluster runs them: submitit's local executor (separate processes), the shared feature cache's
lock, status, failures, and the sbatch script the Slurm launcher submits (no Slurm here)."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from harness import CLI, Child

from bench.sweep import allocation, cells

ROOT = Path(__file__).resolve().parents[1]
CHEAP = ["backbone.preprocess.resize=16", "backbone.preprocess.crop=16", "method=linear", "method.grid.penalty=[1.0]"]


def records(tmp: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "results" / "runs").rglob("*.json"))]


@pytest.mark.heavy
def test_a_local_launcher_sweep_runs_each_cell_in_its_own_process_and_extracts_once(seabench, tmp_path):
    seabench("run", "dataset=digits", "backbone=pixels", "seeds=1", *CHEAP)  # one cell done before
    (before,) = records(tmp_path)
    out = seabench("run", "-m", "hydra/launcher=local", "jobs=4", "dataset=digits", "backbone=pixels,test_resnet",
                   "seeds=1,2", *CHEAP)
    assert "sweep: 4 cells, 1 done, 3 to run" in out.stdout
    runs = records(tmp_path)
    assert len(runs) == 4 and len({r["cell"] for r in runs}) == 4 and before in runs  # not run again
    logs = list((tmp_path / "results" / ".hydra").rglob("*_log.out"))
    assert len({p.parent for p in logs}) == 4  # four submitit jobs, each its own process and log
    for backbone in ("pixels", "test_resnet"):  # test_resnet's two jobs run at once: one extracts
        entries = [e for r in runs if r["backbone"] == backbone for e in r["features"].items()]
        for split in ("train", "val", "test"):
            of_split = [info for name, info in entries if name == split]
            assert len(of_split) == 2 and len({i["key"] for i in of_split}) == 1
            assert sum(not i["hit"] for i in of_split) == 1  # extracted by one job, read by the others
    assert not list((tmp_path / "results" / "runs").rglob("*.running"))


def wait_for_marker(tmp: Path, sweep: Child) -> int:
    """The pid of the job running the sweep's cell, from its `.running` marker."""
    deadline = time.monotonic() + 300
    while not (markers := list((tmp / "results" / "runs").rglob("*.running"))):
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.05)
    return json.loads(markers[0].read_text())["pid"]


@pytest.mark.heavy
def test_a_preempted_job_is_requeued_and_a_killed_one_leaves_nothing_partial(tmp_path):
    from submitit.core.job_environment import JobEnvironment

    def sweep(seed):  # the sweep's own process; submitit starts each of its jobs in another
        args = ["run", "-m", "hydra/launcher=local", "dataset=digits", "backbone=test_resnet", f"seeds={seed}", *CHEAP]
        # submitit waits 15 s for the result file of a job that ended without one (for slow network file
        # systems), here a killed job's: 1 s on this local disk
        patience = "import submitit.core.core\nsubmitit.core.core.Job._results_timeout_s = 1\n"
        return Child(patience + CLI, args, cwd=tmp_path, env={"SEABENCH_CACHE": str(tmp_path / "cache")})

    first = sweep(1)
    os.kill(wait_for_marker(tmp_path, first), JobEnvironment._usr_sig())  # what submitit sends on preemption
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out + err
    log = "".join(p.read_text() for p in (tmp_path / "results" / ".hydra").rglob("*_log.*"))
    assert "this job is preempted" in log and "Requeued job" in log and log.count("Starting with JobEnvironment") == 2
    assert len(records(tmp_path)) == 1

    second = sweep(2)
    os.kill(wait_for_marker(tmp_path, second), signal.SIGKILL)
    out, err = second.communicate(timeout=600)
    assert second.returncode != 0 and "seeds=2 backbone.preprocess.resize=16" in err and ": missing, no record: its job (pid" in err, out + err
    assert len(records(tmp_path)) == 1
    assert not [p for p in (tmp_path / "results").rglob("*") if ".tmp" in p.name]
    again = sweep(2)  # re-submitted: it runs the cell, from what the cache holds
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and len(records(tmp_path)) == 2, out + err


@pytest.mark.heavy
def test_a_failing_cell_fails_the_sweep_under_submitits_own_local_launcher(seabench, tmp_path):
    out = seabench("run", "-m", "hydra/launcher=submitit_local", "dataset=dtd,digits", "backbone=pixels", *CHEAP, check=False)
    assert out.returncode == 2
    assert "1 run(s) of the sweep failed" in out.stderr and "dataset=dtd: dataset dtd is not on disk" in out.stderr
    assert [r["dataset"] for r in records(tmp_path)] == ["digits"]
    (failed,) = (tmp_path / "results" / "runs" / "dtd" / "pixels").glob("linear-selection-cell-*.failed")
    assert "dataset dtd is not on disk" in json.loads(failed.read_text())["reason"]


def test_status_of_a_half_finished_sweep(seabench, tmp_path):
    from bench.sweep import cells, status

    cheap = [f"results_dir={tmp_path / 'results'}", *CHEAP]
    sweep = ["dataset=digits,dtd", "backbone=pixels", "seeds=1,2", *cheap]
    seabench("run", "dataset=digits", "backbone=pixels", "seeds=1", *cheap)
    seabench("run", "-m", "dataset=dtd", "backbone=pixels", "seeds=1", *cheap, check=False)
    # seeds=2: digits runs in a live job (this process), dtd's job died (a pid that has exited)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    for config in status.expand(["dataset=digits,dtd", "backbone=pixels", "seeds=2", *cheap]).configs:
        path = cells.stem(config).with_suffix(".running")
        path.parent.mkdir(parents=True, exist_ok=True)
        pid = os.getpid() if config["dataset"]["name"] == "digits" else dead
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "job": "42", "start": time.time()}))
    out = seabench("status", *sweep).stdout.splitlines()
    assert out[-1] == "4 cells: 1 done, 0 stale, 1 running, 1 failed, 1 missing"
    by_cell = {" ".join(line.split()[1:3]): line for line in out[:-1]}
    assert by_cell["dataset=digits seeds=1"].startswith("done") and ".json" in by_cell["dataset=digits seeds=1"]
    assert by_cell["dataset=dtd seeds=1"].startswith("failed") and "dtd is not on disk" in by_cell["dataset=dtd seeds=1"]
    assert by_cell["dataset=digits seeds=2"].startswith("running") and "job 42" in by_cell["dataset=digits seeds=2"]
    assert by_cell["dataset=dtd seeds=2"].startswith("missing")
    assert "stopped without a record" in by_cell["dataset=dtd seeds=2"]
    rerun = seabench("status", *sweep, "--failed").stdout.splitlines()  # the failed cell and the killed one
    assert len(rerun) == 2 and rerun[0].startswith("seabench run -m dataset=dtd backbone=pixels seeds=1 ")
    assert rerun[1].startswith("seabench run -m dataset=dtd backbone=pixels seeds=2 ")
    # with no overrides: the sweep last started under results/ (the dtd one above)
    last = seabench("status").stdout.splitlines()
    assert last[-1] == "1 cells: 0 done, 0 stale, 0 running, 1 failed, 0 missing"


def test_threads_come_from_the_allocation_and_are_shared(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv(allocation.PARALLEL_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert allocation.threads("auto") == 16
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert allocation.threads("auto") == 8
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setenv(allocation.PARALLEL_ENV, "3")
    assert allocation.threads("auto") == 5  # 16 cores, 3 jobs at once
    monkeypatch.setenv(allocation.PARALLEL_ENV, "32")
    assert allocation.threads("auto") == 1
    assert allocation.threads(4) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit choice in the environment wins over auto
    assert allocation.threads("auto") == 3 and allocation.threads(4) == 4
    with pytest.raises(Exception, match="threads must be a positive integer or auto"):
        allocation.threads(0)


def test_the_slurm_launcher_submits_the_resources_asked_for(seabench, tmp_path):
    """The sbatch script submitit writes, caught by a stand-in `sbatch` (no Slurm here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):  # submitit looks for srun, then runs sbatch on the script
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path / 'submitted.sh'}\necho 'no Slurm here' >&2\nexit 1\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = seabench("run", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=lab",
                   "hydra.launcher.cpus_per_task=6", "hydra.launcher.timeout_min=90", "dataset=digits",
                   "backbone=pixels,test_resnet", *CHEAP, check=False,
                   env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert out.returncode != 0 and "2 run(s) of the sweep failed" in out.stderr
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --mem=32GB", "#SBATCH --time=90",
                 "#SBATCH --array=0-1%2", "#SBATCH --signal=USR2@120", "#SBATCH --job-name=seabench",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1"):
        assert line in script, script
    assert "-m submitit.core._submit" in script and "--open-mode=append" in script


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from bench import backbones, features
    from bench.data import digits

    cache, ready, started = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    task = digits.load(test_per_class=5, val_per_class=5, seed=0)
    bb = backbones.create(name="test_resnet", arch="test_resnet", source="random", init_seed=0,
                          preprocess={"resize": 16, "crop": 16, "interpolation": "bicubic",
                                      "mean": None, "std": None}, cache_dir=cache)
    if sys.argv[4] == "hang":  # hold the lock and never finish: the test kills this process
        def hang(*args, **kwargs):
            started.touch()
            time.sleep(600)
        features.extract = hang
    ready.touch()
    while len(list(ready.parent.glob("ready-*"))) < int(sys.argv[5]):  # start together
        time.sleep(0.05)
    X, y, info = features.cached(bb, "digits", "val", task.splits["val"], cache_dir=cache, batch_size=16,
                                 num_workers=0, device=torch.device("cpu"), lock_stale_s=30)
    print(info["hit"], float(X.double().sum()), X.shape[0])
""")


def holders(tmp: Path, n: int, mode: str) -> list[Child]:
    return [Child(HOLDER, [tmp / "cache", tmp / f"ready-{i}", tmp / "started", mode, n], cwd=tmp) for i in range(n)]


def test_eight_jobs_started_at_once_extract_once_and_agree(tmp_path):
    outs = [p.communicate(timeout=300)[0].split() for p in holders(tmp_path, 8, "run")]
    assert sorted(o[0] for o in outs) == ["False"] + ["True"] * 7
    assert len({o[1] for o in outs}) == 1 and {o[2] for o in outs} == {"50"}


def test_a_job_killed_while_holding_the_lock_does_not_block_the_next(tmp_path):
    (hung,) = holders(tmp_path, 1, "hang")
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert hung.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    hung.send_signal(signal.SIGKILL)
    hung.wait()
    (tmp_path / "ready-0").unlink()
    start = time.monotonic()
    (after,) = holders(tmp_path, 1, "run")
    assert after.communicate(timeout=120)[0].split()[0] == "False"  # it extracted: the dead job wrote nothing
    assert time.monotonic() - start < 30 + 20  # the same host: a dead pid is seen at once, not after 30 s
    assert not [p for p in (tmp_path / "cache").rglob("*.pt*") if ".tmp" in p.name]


def test_a_lock_left_on_another_host_is_taken_over_after_the_stale_timeout(tmp_path, caplog):
    """A holder this host cannot probe (another node): its lease is taken once unrenewed for lock_stale_s."""
    import logging

    import torch

    from bench import backbones, features
    from bench.data import digits

    task = digits.load(test_per_class=5, val_per_class=5, seed=0)
    bb = backbones.create(name="test_resnet", arch="test_resnet", source="random", init_seed=0,
                          preprocess={"resize": 16, "crop": 16, "interpolation": "bicubic", "mean": None,
                                      "std": None}, cache_dir=tmp_path)
    digest = features.key(bb, "digits", task.splits["val"], amp=False)
    entry = tmp_path / "features" / "digits" / "test_resnet" / f"val-{digest[:24]}.pt"
    entry.parent.mkdir(parents=True)
    Path(f"{entry}.lock").write_text("filelock/2\npid=4242\nhost=node17\nmode=lease\n"
                                     f"token={'ab' * 16}\nduration=1.5\n")
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="bench.locks"):
        _, _, info = features.cached(bb, "digits", "val", task.splits["val"], cache_dir=tmp_path, batch_size=16,
                                     num_workers=0, device=torch.device("cpu"), lock_stale_s=1.5)
    assert 1.5 <= time.monotonic() - start < 15 and not info["hit"]
    assert "waiting for pid 4242 on node17 to finish extracting digits/val" in caplog.text


def test_transfer11_is_every_dataset_of_the_table_by_the_zoo_by_the_feature_methods():
    import yaml

    from bench.sweep import status

    sweep = status.expand(["experiment=transfer11"])
    zoo = {p.stem for p in (ROOT / "conf" / "backbone").glob("*.yaml")
           if (c := yaml.safe_load(p.read_text()))["source"] == "checkpoint" and c.get("file")}
    assert len(zoo) == 20 and {c["backbone"]["name"] for c in sweep.configs} == zoo
    assert {c["dataset"]["name"] for c in sweep.configs} == {
        "cifar10", "cifar100", "food101", "mit67", "pets", "flowers102", "caltech101", "cars", "aircraft", "dtd",
        "sun397"}
    assert {c["method"]["name"] for c in sweep.configs} == {"linear", "sgd", "sea"}
    assert len(sweep.configs) == 11 * 20 * 3 == len({json.dumps(c, sort_keys=True) for c in sweep.configs})


def test_the_launchers_compose_and_their_resources_can_be_set():
    from bench.sweep import status

    slurm = status.expand(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "dataset=digits,dtd"])
    assert slurm.launcher.endswith("SlurmLauncher") and slurm.batch is None and len(slurm.configs) == 2
    local = status.expand(["hydra/launcher=local", "jobs=3", "dataset=digits"])
    assert local.launcher.endswith("LocalLauncher") and local.batch == 3
    assert status.expand(["dataset=digits"]).batch is None  # the basic launcher: one process, no batches


@pytest.mark.heavy
def test_a_local_launchers_jobs_stop_when_the_sweep_is_killed(tmp_path):
    """kill -9 of the sweep's own process: submitit's local jobs would run on and write records nobody
    waits for; each notices within a second or two that its sweep is gone, stops and leaves no record."""
    args = ["run", "-m", "hydra/launcher=local", "dataset=digits", "backbone=pixels", "method=sgd", "seeds=1",
            "method.params.epochs=100000", "method.grid.lr=[0.4]", "method.grid.center=[false]"]
    sweep = Child(CLI, args, cwd=tmp_path, env={"SEABENCH_CACHE": str(tmp_path / "cache")}, new_session=True)
    job = wait_for_marker(tmp_path, sweep)
    try:
        sweep.kill()
        sweep.wait(60)
        deadline = time.monotonic() + 60
        while not cells.gone(job):
            assert time.monotonic() < deadline, "the job went on after its sweep was killed"
            time.sleep(0.2)
    finally:
        if not cells.gone(job):
            os.kill(job, signal.SIGKILL)
    log = "".join(p.read_text() for p in (tmp_path / "results" / ".hydra").rglob("*_log.*"))
    assert "the sweep that started this job" in log and "is gone: stopping this job too" in log, log
    assert records(tmp_path) == [] and not list((tmp_path / "results" / "runs").rglob("*.running"))
