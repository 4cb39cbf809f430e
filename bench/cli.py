"""The `seabench` command. The only module that sees Hydra's DictConfig; everything below takes plain values.

    seabench run [-m] <hydra overrides>   one run (or a sweep with -m) -> one record per run
    seabench table                        records -> results/table.md and results/table.csv, printed
    seabench doctor                       which datasets are on disk, complete or not
    seabench data get NAME                download and verify a dataset
    seabench backbones                    the checkpoint zoo
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from bench import UserError

# subcommand -> "module:function"; each function takes the remaining argv
COMMANDS = {
    "run": "bench.cli:run_main",
    "table": "bench.table:main",
    "data": "bench.data.doctor:data_main",
    "doctor": "bench.data.doctor:doctor_main",
    "backbones": "bench.backbones.zoo:main",
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
FAILED: list[str] = []  # the one-sentence errors of a sweep's runs: the sweep goes on, then reports them
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


def run_main(argv: list[str]) -> int:
    """Hand the overrides to Hydra: `seabench run [-m] key=value ...`."""
    import hydra
    from omegaconf import OmegaConf

    check_choices(argv)
    if not OmegaConf.has_resolver("logspace"):
        OmegaConf.register_new_resolver("logspace", logspace)
    task = hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")(run_job)
    sys.argv = ["seabench run", *argv]
    FAILED.clear()
    task()
    if FAILED:
        raise UserError(f"{len(FAILED)} run(s) of the sweep failed (the others finished): {'; '.join(FAILED)}")
    return 0


def run_job(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from bench import job

    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        try:
            from bench.data.augself import loader_options

            extra = loader_options(config["dataset"], config["protocol"].get("split", "canonical"))
            dataset = instantiate(cfg.dataset.load, root=Path(config["data_root"]).expanduser().resolve(), **extra)
        except InstantiationException as err:  # Hydra wraps the loader's own errors
            raise (err.__cause__ if isinstance(err.__cause__, UserError) else err) from None
        job.run(config, dataset)
    except UserError as err:
        print(f"seabench: error: {err}", file=sys.stderr)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(2)
        FAILED.append(str(err))
