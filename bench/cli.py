"""seabench: benchmark classifiers trained on frozen deep features, and the feature-space augmentations that
improve them (linear probe, SGD, SeA, ...), over the standard transfer datasets. Features are extracted once
and cached; every run writes one JSON record; `seabench table` turns the records into the comparison table.

    seabench run [-m] <hydra overrides>   one run (or a sweep with -m) -> one record per run
                                          e.g. seabench run backbone=pixels dataset=digits method=sea
    seabench table                        records -> results/table.md and results/table.csv, printed
    seabench list [methods|datasets|backbones|protocols|experiments]   what exists, one line each
    seabench doctor                       which datasets are on disk, complete or not
    seabench data get NAME                download and verify a dataset
    seabench backbones                    the checkpoint zoo, in detail
    seabench status [--failed] <overrides> each cell of a sweep: done / running / failed / missing

`seabench COMMAND --help` for a command's options; `seabench run --help` for Hydra's.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from bench import UserError, temps
from bench.config import (
    CONF,
    check_choices,
    check_mode,
    check_overrides,
    check_syntax,
    closest,
    experiment_sweep,
    method_section,
    read_yaml,
    register_resolvers,
    validate,
)

# subcommand -> "module:function"; each function takes the remaining argv
COMMANDS = {
    "run": "bench.cli:run_main",
    "table": "bench.report.table:main",
    "list": "bench.cli:list_main",
    "methods": "bench.cli:methods_main",
    "datasets": "bench.cli:datasets_main",
    "data": "bench.data.doctor:data_main",
    "doctor": "bench.data.doctor:doctor_main",
    "backbones": "bench.backbones.zoo:main",
    "status": "bench.cli:status_main",
}


MAIN_PID = os.getpid()  # set again by `main`; a forked DataLoader worker has another pid


class Terminated(BaseException):
    """SIGTERM (a scheduler ending the job), raised where the process is, so that every `finally` runs.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


def on_sigterm(signum, frame) -> None:
    if os.getpid() != MAIN_PID:  # a forked worker (DataLoader): end quietly, the main process reports
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    # torch's DataLoader watches its workers through SIGCHLD and raises when one ends by a signal, as they
    # do now (a scheduler signals the whole job): they end with us, which is no error to report
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run a command; a fault ends in one line on stderr and a non-zero exit, never a traceback."""
    global MAIN_PID
    MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with temps.faults_as_sentences():
            code = dispatch(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except BrokenPipeError:  # `seabench list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit is quiet too
        return 141  # 128 + SIGPIPE, as a command killed by the closed pipe
    except UserError as err:
        print(f"seabench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        ended("interrupted")
        return 130
    except Terminated:
        ended("terminated (SIGTERM)")
        return 143


def ended(how: str) -> None:
    temps.remove_own()  # the `finally` blocks ran on the way here; this is the net under them
    print(f"seabench: {how}; temporary files removed, finished records and cache entries kept", file=sys.stderr)


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}; {closest(command, COMMANDS)}known: {', '.join(COMMANDS)}")
    module, function = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), function)(rest) or 0


def start_sweep(argv: list[str]):
    """Before a sweep launches: its cells, counted and printed; the local launcher's jobs share the cores."""
    from bench.sweep import allocation, cells, status

    sweep = status.expand([a for a in argv if a not in ("-m", "--multirun")])
    if sweep.launcher.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
        raise UserError("hydra/launcher=slurm submits each cell with sbatch, which is not on this machine: run "
                        "it on the cluster's login node, or here with hydra/launcher=local (or without a launcher)")
    for config in sweep.configs:  # every cell's settings, before the first cell starts
        name = config["method"]["name"]
        validate(config, method_section(name) if (CONF / "method" / f"{name}.yaml").is_file() else None)
    found = [state for state, _ in status.states(sweep, job_checker())]
    done, stale = found.count("done"), found.count("stale")
    print(f"sweep: {len(sweep.configs)} cells, {done} done, {len(sweep.configs) - done} to run"
          + (f" ({stale} of them over a stale record: `seabench status` says why)" if stale else ""), flush=True)
    if sweep.launcher.endswith("LocalLauncher"):  # submitit's local executor: `batch` processes at once
        os.environ[allocation.PARALLEL_ENV] = str(min(sweep.batch or len(sweep.configs), len(sweep.configs)))
        os.environ[cells.SWEEP_ENV] = str(os.getpid())  # its jobs stop when this process is killed
    return sweep


def run_main(argv: list[str]) -> int:
    """Hand the overrides to Hydra: `seabench run [-m] key=value ...`."""
    import hydra

    from bench.sweep import status

    check_overrides(argv)
    check_choices(argv)
    check_mode(argv)
    check_syntax(argv)
    register_resolvers()
    sweep = start_sweep(argv) if {"-m", "--multirun"} & set(argv) else None
    task = hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")(run_job)
    sys.argv = ["seabench run", *(per_cell(argv) if sweep else argv)]
    try:
        task()
    except SystemExit:  # Hydra's own error exit, e.g. when a job died under submitit (its launcher raises)
        if sweep is not None:
            status.report(sweep, job_checker())
        raise
    if sweep is not None:
        status.report(sweep, job_checker())
    return 0


def job_checker():
    """bench.job.checker, imported when first used (torch: seconds): what tells a stale record (data, weights
    file or device changed) wherever a cell's state is shown; the sweep package imports nothing of a run."""
    def checker(**options):
        from bench import job

        return job.checker(**options)

    return checker


def status_main(argv: list[str]) -> int:
    from bench.sweep import status

    return status.status_main(argv, job_checker())


def per_cell(argv: list[str]) -> list[str]:
    """`argv` for Hydra's multirun, where a setting inside a swept group (`method.params.epochs=1` with
    `method=sgd,sea`) is a one-value sweep, `choice(1)`. Hydra composes a sweep's primary config with the
    group's default (method linear) and the fixed overrides, where the key does not exist ("add `+`", and then
    every cell fails: there it exists); a sweep's values are applied to each cell only. The checks before
    (bench.config) made sure that every swept method has the key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser, args = OverridesParser.create(), [a for a in argv if not a.startswith("-")]
    parsed = dict(zip(args, parser.parse_overrides(args)))
    swept = {o.key_or_group for o in parsed.values() if o.is_sweep_override()}
    for o in parsed.values():
        if o.key_or_group == "experiment" and not o.is_sweep_override():
            swept |= set(experiment_sweep(str(o.value())))
    out = []
    for arg in argv:
        o = parsed.get(arg)
        inside = o is not None and o.key_or_group.split(".")[0] in swept and "." in o.key_or_group
        if inside and o.type == OverrideType.CHANGE and not o.is_sweep_override():
            arg = f"{o.key_or_group}=choice({arg.partition('=')[2]})"
        out.append(arg)
    return out


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

    from bench.sweep import cells

    config = OmegaConf.to_container(cfg, resolve=True)
    hydra = HydraConfig.get()
    sweep = hydra.mode == RunMode.MULTIRUN
    try:
        validate(config, method_section(hydra.runtime.choices["method"]))  # before any work
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

    from bench import job  # torch, timm ...: seconds of imports, after the checks
    from bench.data.augself import loader_options
    from bench.sweep import allocation

    torch.set_num_threads(allocation.threads(config["threads"]))
    try:
        extra = loader_options(config["dataset"], config["protocol"].get("split", "canonical"))
        dataset = instantiate(cfg.dataset.load, root=Path(config["data_root"]).expanduser().resolve(), **extra)
    except InstantiationException as err:  # Hydra wraps the loader's own errors
        raise (err.__cause__ if isinstance(err.__cause__, UserError) else err) from None
    with temps.faults_as_sentences():
        job.run(config, dataset, backbone_overrides=backbone_overrides(overrides))


LISTED = {"methods": "method", "datasets": "dataset", "backbones": "backbone", "protocols": "protocol",
          "experiments": "experiment"}


def describe(path: Path) -> str:
    """One line on a config file: a backbone's label, else the first sentence of the file's first comment."""
    lines = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    lines = [line for line in lines if line and not line.startswith("@package")]
    if path.parent.name == "backbone" and (label := read_yaml(path).get("label")):
        return str(label)
    return re.split(r"(?<=\.)\s(?=[A-Z])", lines[0])[0].rstrip(":") if lines else ""


def list_main(argv: list[str]) -> int:
    """`seabench list [KIND ...]`: what exists (the config tree is the registry), one line each."""
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: seabench list [{'|'.join(LISTED)}]   (default: all); then `seabench run KIND=NAME`")
        return 0
    if unknown := [k for k in argv if k not in LISTED]:
        raise UserError(f"cannot list {unknown[0]!r}; {closest(unknown[0], LISTED)}known: {', '.join(LISTED)}")
    for kind in argv or LISTED:
        files = sorted((CONF / LISTED[kind]).glob("*.yaml"))
        width = max(len(p.stem) for p in files)
        print(f"{kind} ({LISTED[kind]}=NAME):")
        for p in files:
            print(f"  {p.stem:<{width}}  {describe(p)}")
    return 0


def methods_main(argv: list[str]) -> int:
    return list_main(["methods", *argv])


def datasets_main(argv: list[str]) -> int:
    return list_main(["datasets", *argv])
