"""The `seabench` command. The only module that sees Hydra's DictConfig; everything below takes plain values.

    seabench run [-m] <hydra overrides>   one run (or a sweep with -m) -> one record per run
    seabench table                        records -> results/table.md and results/table.csv, printed
    seabench doctor                       which datasets are on disk, complete or not
    seabench data get NAME                download and verify a dataset
    seabench backbones                    the checkpoint zoo
    seabench status [--failed] <overrides> each cell of a sweep: done / running / failed / missing
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from contextlib import nullcontext
from pathlib import Path

from bench import UserError

# subcommand -> "module:function"; each function takes the remaining argv
COMMANDS = {
    "run": "bench.cli:run_main",
    "table": "bench.table:main",
    "data": "bench.data.doctor:data_main",
    "doctor": "bench.data.doctor:doctor_main",
    "backbones": "bench.backbones.zoo:main",
    "status": "bench.status:status_main",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"seabench: error: unknown command {command!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[command].split(":")
    try:
        return getattr(importlib.import_module(module), function)(rest) or 0
    except UserError as err:
        print(f"seabench: error: {err}", file=sys.stderr)
        return 2


def logspace(start, stop, num) -> list[float]:
    """`${logspace:-6,5,45}` in a config: `num` values from 10**start to 10**stop, log-spaced."""
    return [10.0 ** (start + (stop - start) * i / (int(num) - 1)) for i in range(int(num))]


CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("backbone", "dataset", "method", "protocol", "experiment")


def check_choices(argv: list[str]) -> None:
    """One sentence for an unknown group choice (`dataset=nope`, or one of a sweep's `a,b`), before Hydra."""
    for arg in argv:
        group, _, value = arg.lstrip("+").partition("=")
        if group in GROUPS and value and "(" not in value:  # leave Hydra's sweep functions to Hydra
            known = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
            for choice in value.split(","):
                if choice not in known and choice != "null":
                    raise UserError(f"unknown {group} {choice!r}; known: {', '.join(known)}")


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("logspace"):
        OmegaConf.register_new_resolver("logspace", logspace)


def start_sweep(argv: list[str]):
    """Before a sweep launches: its cells, counted and printed; the local launcher's jobs share the cores."""
    from bench import allocation, status

    sweep = status.expand([a for a in argv if a not in ("-m", "--multirun")])
    done = sum(state == "done" for state, _ in status.states(sweep))
    print(f"sweep: {len(sweep.configs)} cells, {done} done, {len(sweep.configs) - done} to run", flush=True)
    if sweep.launcher.endswith("LocalLauncher"):  # submitit's local executor: `batch` processes at once
        os.environ[allocation.PARALLEL_ENV] = str(min(sweep.batch or len(sweep.configs), len(sweep.configs)))
    return sweep


def run_main(argv: list[str]) -> int:
    """Hand the overrides to Hydra: `seabench run [-m] key=value ...`."""
    import hydra

    from bench import status

    check_choices(argv)
    register_resolvers()
    sweep = start_sweep(argv) if {"-m", "--multirun"} & set(argv) else None
    task = hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")(run_job)
    sys.argv = ["seabench run", *argv]
    try:
        task()
    except SystemExit:  # Hydra's own error exit, e.g. when a job died under submitit (its launcher raises)
        if sweep is not None:
            status.report(sweep)
        raise
    if sweep is not None:
        status.report(sweep)
    return 0


def backbone_overrides(overrides) -> list[str]:
    """What the command line changed inside the backbone's config (`backbone.preprocess.resize=28` ->
    `preprocess.resize=28`): part of the table's row label, since it changes the features."""
    prefix = re.compile(r"^([+~]*)backbone\.")
    return sorted(prefix.sub(r"\1", o) for o in overrides if prefix.match(o))


def run_job(cfg) -> None:
    """One cell, in whichever process the launcher gives it. In a sweep, a failure is written beside the
    cell's record path (its reason) and the sweep goes on: `run_main` reports every failed cell at the end."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from bench import cells

    config = OmegaConf.to_container(cfg, resolve=True)
    hydra = HydraConfig.get()
    sweep = hydra.mode == RunMode.MULTIRUN
    try:
        with cells.running(config) if sweep else nullcontext():
            run_cell(cfg, config, list(hydra.overrides.task))
        if sweep:
            cells.succeed(config)
    except Exception as err:  # in a sweep every failure is recorded and the sweep goes on; alone, a bug raises
        if not sweep and not isinstance(err, UserError):
            raise
        reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}".splitlines()[0]
        if not isinstance(err, UserError):
            logging.getLogger(__name__).exception("the run failed")
        print(f"seabench: error: {reason}", file=sys.stderr)
        if not sweep:
            sys.exit(2)
        cells.fail(config, reason, list(hydra.overrides.task))


def run_cell(cfg, config: dict, overrides: list[str]) -> None:
    import torch
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from bench import allocation, job

    torch.set_num_threads(allocation.threads(config["threads"]))
    try:
        dataset = instantiate(cfg.dataset.load, root=Path(config["data_root"]).expanduser().resolve())
    except InstantiationException as err:  # Hydra wraps the loader's own errors
        raise (err.__cause__ if isinstance(err.__cause__, UserError) else err) from None
    job.run(config, dataset, backbone_overrides=backbone_overrides(overrides))
