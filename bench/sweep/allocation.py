"""How many threads a job may use: its share of the CPUs it was given, not torch's count of the machine's cores.

torch starts one intra-op thread per core it sees; on a shared machine that oversubscribes the cores (a fit on
2 shared cores slowed from 5.8 s to 83.7 s next to two busy processes, 10.6 s with one thread: issue 12).
"""

from __future__ import annotations

import logging
import os

from bench import UserError

log = logging.getLogger(__name__)

# set by `seabench run -m` under the local launcher: how many of its jobs run at once on this machine
PARALLEL_ENV = "SEABENCH_PARALLEL_JOBS"


def cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by Slurm's allocation when it has one."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity masks
        count = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit():
        count = min(count, int(slurm))
    return max(1, count)


def threads(setting: int | str) -> int:
    """`threads=auto`: OMP_NUM_THREADS when the environment sets it (an explicit choice, which torch itself
    follows), else this job's CPUs split between the jobs sharing them; or the number given."""
    if setting == "auto" and os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]):
        return int(os.environ["OMP_NUM_THREADS"])
    if setting != "auto":
        if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
            raise UserError(f"threads must be a positive integer or auto, not {setting!r}")
        return setting
    parallel = os.environ.get(PARALLEL_ENV, "1")
    share = cpus() // max(1, int(parallel) if parallel.isdigit() else 1)
    return max(1, share)
