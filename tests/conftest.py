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


def pytest_collection_modifyitems(items):
    """The tests marked `heavy` (tens of seconds: the demo, jobs requeued under submitit, eight jobs at once)
    start first, each on a worker of its own, while the short ones fill the other workers."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable: the rest keep their order


@pytest.fixture
def seabench(tmp_path):
    """`seabench(*args, check=True)`: the command line in this process, in tmp_path, with its own caches."""
    def run(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return seabench_in_process(*args, cwd=tmp_path, env=own_env(tmp_path) | (env or {}), check=check)

    return run
