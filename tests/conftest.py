"""What the tests share: one thread for torch, the command line run in this process (harness.py), and the
order in which the longest tests start (spread over pytest-xdist's workers, they must not end the run alone)."""

import os
import subprocess

import pytest
import torch
from harness import own_env, seabench_in_process

# The tests' problems are tiny: with several intra-op threads, their many small ops spend more time
# synchronising threads than computing (20x slower seen on a busy 2-core machine). Speed is measured
# by benchmarks/, not here.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tests that take longest (tens of seconds: the demo, real processes killed and requeued, eight jobs at
# once). They start first, each on its own worker, while the short ones fill the other workers.
HEAVY = ("test_demo_and_table", "test_concurrent_jobs_on_one_cold_cell", "test_a_preempted_job_is_requeued",
         "test_a_local_launcher_sweep_runs_each_cell", "test_eight_jobs_started_at_once")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not item.name.startswith(HEAVY))  # stable: the rest keep their order


@pytest.fixture
def seabench(tmp_path):
    """`seabench(*args, check=True)`: the command line in this process, in tmp_path, with its own caches."""
    def run(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return seabench_in_process(*args, cwd=tmp_path, env=own_env(tmp_path) | (env or {}), check=check)

    return run
