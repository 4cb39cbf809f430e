"""`seabench status`: where each cell of a sweep stands, from what its jobs leave on disk.

    seabench status <overrides of the `seabench run -m` it describes>   that sweep
    seabench status [RESULTS_DIR]            the sweep last started under RESULTS_DIR (default: results)
    seabench status ... --failed             the commands that re-run just its cells without a (current) record
                                             (stale, failed, killed, or never started)

One line per cell: done (its record), stale (a record whose data, weights file or device is not what a run
would sign now: `bench.job.checker`, which the CLI hands in, as this package imports nothing of a run),
running (who, since when), failed (the one-sentence reason the cell wrote beside where its record would be)
or missing; then a count of each. Like `seabench run`, this module
composes the sweep with Hydra (it describes the same cells); what it returns is plain Python.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import UserError
from bench.config import CONF, GROUPS, check_choices, check_dataset, read_yaml, register_resolvers
from bench.sweep import cells

STATES = ("done", "stale", "running", "failed", "missing")


@dataclass
class Sweep:
    overrides: list[list[str]]  # each cell's overrides, as Hydra's basic sweeper lists them
    configs: list[dict]  # each cell's resolved config
    launcher: str  # hydra.launcher._target_
    batch: int | None  # hydra.sweeper.max_batch_size: jobs launched at once (None: all)

    def varying(self, i: int) -> str:
        """The overrides that tell cell i from the others (all of them for a one-cell sweep)."""
        common = set.intersection(*(set(o) for o in self.overrides)) if len(self.overrides) > 1 else set()
        return " ".join(o for o in self.overrides[i] if o not in common) or " ".join(self.overrides[i])


def expand(argv: list[str]) -> Sweep:
    """The cells `seabench run -m <argv>` runs: the experiment's sweeper params, then the command line."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException


    check_choices(argv)
    register_resolvers()
    parser = OverridesParser.create()
    try:
        fixed = [o.input_line for o in parser.parse_overrides(argv) if not o.is_sweep_override()]
        # Hydra's own settings (launcher, sweeper params) from the fixed overrides, without those inside a
        # group (`method.grid.lr=...`), which need the group's swept choice (sgd, not the default linear)
        outside = [o for o in fixed if key(o).split(".")[0] not in GROUPS or "." not in key(o)]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            hydra = compose("config", overrides=outside, return_hydra_config=True).hydra
            params = [f"{k}={v}" for k, v in (hydra.sweeper.params or {}).items()]
            (lists,) = BasicSweeper.split_arguments(parser.parse_overrides(params + argv), None)
            configs = compose_all(lists, lambda o: OmegaConf.to_container(compose("config", overrides=o),
                                                                          resolve=True))
            return Sweep(lists, configs, hydra.launcher._target_, hydra.sweeper.max_batch_size)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(" ".join(str(err).split())) from None


def key(override: str) -> str:
    """'method' of 'method=sea' (and of '+method=sea', '~method')."""
    return override.lstrip("+~").partition("=")[0]


def compose_all(lists: list[list[str]], compose) -> list[dict]:
    """Each cell's config. When only group choices vary (the usual sweep), each choice is composed once and
    the cells assembled from those nodes (the groups' files refer only to themselves): 34 compositions
    instead of 660 for experiment=transfer11."""
    common = set.intersection(*(set(cell) for cell in lists))
    swept = {key(o) for cell in lists for o in cell if o not in common}
    inside = any(key(o).split(".")[0] in swept for o in common)  # `method.grid.lr=...` needs each cell's method
    if not swept <= {"backbone", "dataset", "method", "protocol"} or inside:
        return [compose(cell) for cell in lists]
    fixed = [o for o in lists[0] if key(o) not in swept]
    base, nodes = compose(fixed), {}
    for choice in {o for cell in lists for o in cell if key(o) in swept}:
        nodes[choice] = compose([*fixed, choice])[key(choice)]
    return [{**base, **{key(o): nodes[o] for o in cell if o in nodes}} for cell in lists]


def last_sweep(results_dir: Path) -> list[str]:
    """The command-line overrides of the sweep last started under results_dir (Hydra saves each one)."""
    saved = sorted(Path(results_dir).glob(".hydra/*/multirun.yaml"))
    if not saved:
        raise UserError(f"no sweep was started under {results_dir} (no .hydra/*/multirun.yaml); "
                        "pass the overrides of the sweep instead: seabench status experiment=demo")
    overrides = read_yaml(saved[-1])["hydra"]["overrides"]
    return [o for o in overrides["hydra"] if not o.startswith("hydra.mode=")] + overrides["task"]


def states(sweep: Sweep, checker=None) -> list[tuple[str, str]]:
    """(state, detail) of every cell, in the sweep's order. `checker(remote=...)` makes the function that says
    why a record is stale (bench.job.checker); without one, a cell with a record is done."""
    done = {}
    for results_dir in {c["results_dir"] for c in sweep.configs}:
        done |= cells.records(Path(results_dir))
    stale = checker(remote="slurm" in sweep.launcher.lower()) if checker and done else None
    return [cells.state(config, done, stale) for config in sweep.configs]


def rerun(sweep: Sweep, i: int) -> str:
    """The command that runs cell i again (under the same launcher and settings)."""
    return shlex.join(["seabench", "run", "-m", *sweep.overrides[i]])


def status_main(argv: list[str], checker=None) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        return 0
    failed_only = "--failed" in argv
    argv = [a for a in argv if a not in ("--failed", "-m", "--multirun")]  # `run -m`'s own words are welcome
    if len(argv) <= 1 and all("=" not in a for a in argv):  # nothing, or a results dir
        argv = last_sweep(Path(argv[0] if argv else "results"))
    sweep = expand(argv)
    for config in sweep.configs:  # a cell's markers are named after its dataset (a folder's: its path)
        check_dataset(config["dataset"], config["protocol"])
    found = states(sweep, checker)
    if failed_only:
        for i, (state, _) in enumerate(found):
            if state in ("stale", "failed", "missing"):  # killed cells are missing (no record, no live job)
                print(rerun(sweep, i))
        return 0
    width = max(len(sweep.varying(i)) for i in range(len(found)))
    for i, (state, detail) in enumerate(found):
        print(f"{state:<8} {sweep.varying(i):<{width}}  {detail}".rstrip())
    counts = Counter(state for state, _ in found)
    print(f"{len(found)} cells: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    return 0


def report(sweep: Sweep, checker=None) -> None:
    """After a sweep: one clear error naming each cell without a record and why, whatever the launcher."""
    found = states(sweep, checker)
    bad = [(i, s, d) for i, (s, d) in enumerate(found) if s != "done"]
    if bad:
        logs = Path(sweep.configs[0]["results_dir"]) / ".hydra"
        lines = [f"  {sweep.varying(i)}: " + (detail if state == "failed" else f"stale record {detail}"
                 if state == "stale" else f"{state}, no record{': ' + detail if detail else ''} (its job's log is under {logs})")
                 for i, state, detail in bad]
        if len(lines) > 20:  # a launcher that failed as a whole (sbatch refused) leaves every cell missing
            lines = [*lines[:20], f"  ... and {len(lines) - 20} more: `seabench status <the same overrides>`"]
        raise UserError(f"{len(bad)} run(s) of the sweep failed ({len(found) - len(bad)} of {len(found)} finished); "
                        "`seabench status <the same overrides> --failed` prints the commands to re-run them:\n"
                        + "\n".join(lines))
