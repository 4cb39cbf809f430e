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
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from bench import UserError, temps
from bench.checks import closest

# subcommand -> "module:function"; each function takes the remaining argv
COMMANDS = {
    "run": "bench.cli:run_main",
    "table": "bench.table:main",
    "list": "bench.cli:list_main",
    "methods": "bench.cli:methods_main",
    "datasets": "bench.cli:datasets_main",
    "data": "bench.data.doctor:data_main",
    "doctor": "bench.data.doctor:doctor_main",
    "backbones": "bench.backbones.zoo:main",
    "status": "bench.status:status_main",
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
            return dispatch(sys.argv[1:] if argv is None else argv)
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


def logspace(start, stop, num) -> list[float]:
    """`${logspace:-6,5,45}` in a config: `num` values from 10**start to 10**stop, log-spaced."""
    return [10.0 ** (start + (stop - start) * i / (int(num) - 1)) for i in range(int(num))]


CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("backbone", "dataset", "method", "protocol", "experiment")
MODES = {"-m": "-m", "--multirun": "-m", "-c": "--cfg", "--cfg": "--cfg", "-i": "--info", "--info": "--info"}


def check_choices(argv: list[str]) -> None:
    """One sentence for an unknown group choice (`dataset=nope`, or one of a sweep's `a,b`), before Hydra."""
    for arg in argv:
        group, _, value = arg.lstrip("+").partition("=")
        if group in GROUPS and value and "(" not in value:  # leave Hydra's sweep functions to Hydra
            known = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
            for choice in value.split(","):
                if choice not in known and choice != "null":
                    raise UserError(f"unknown {group} {choice!r}; {closest(choice, known)}known: {', '.join(known)}")


def read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def method_section(choice: str, section: str = "params") -> dict:
    """`params` (or `grid`) of conf/method/<choice>.yaml over those of the files it extends (values unresolved)."""
    conf, out = read_yaml(CONF / "method" / f"{choice}.yaml"), {}
    for base in conf.get("defaults", []):
        if isinstance(base, str) and base != "_self_":
            out |= method_section(base, section)
    return out | (conf.get(section) or {})


def overrides(argv: list[str]) -> list[tuple[str, list[str], str]]:
    """(prefix, key path, value) of each `key=value` override; prefix is '+', '++', '~' or ''."""
    out = []
    for arg in argv:
        if match := re.fullmatch(r"(\+\+|\+|~)?([\w./@-]+)=(.*)", arg, re.DOTALL):
            out.append((match[1] or "", re.split(r"[./@]", match[2].replace("/", ".")), match[3]))
    return out


def check_method_key(prefix: str, path: list[str], methods: list[str]) -> None:
    """`method.params.X` and `method.grid.X`: X must be a hyperparameter of the chosen method(s); a grid key
    that the method's YAML does not sweep is added with `+`."""
    known = [m for m in methods if (CONF / "method" / f"{m}.yaml").is_file()]
    params = {k for m in known for k in method_section(m)}
    key, name = path[2], ".".join(path)
    if params and key not in params:
        raise UserError(f"{'.'.join(path[:3])} is not a hyperparameter of method {', '.join(known)}; "
                        f"{closest(key, params)}known: {', '.join(sorted(params))}")
    if path[1] == "grid" and not prefix and any(key not in method_section(m, "grid") for m in known):
        raise UserError(f"method {', '.join(known)} does not sweep {key} by default: add it to the grid with "
                        f"+{name}=[...]")


def check_overrides(argv: list[str]) -> None:
    """Refuse, in one sentence and before any work, what Hydra would refuse in a paragraph or let pass unread:
    a key seabench does not know (`seed=1`, `+seed=1`, `methd=sea`, `method.params.etta=1`), an added key
    nothing reads (`+dataset.foo=1`), and Hydra modes that cannot be combined (`-m --cfg job`)."""
    if len(modes := {MODES[a] for a in argv if a in MODES}) > 1:
        raise UserError(f"{' and '.join(sorted(modes))} cannot be combined (-m runs a sweep, --cfg prints the "
                        f"config, --info describes it): use one")
    config = read_yaml(CONF / "config.yaml")
    launchers = {k for p in (CONF / "hydra" / "launcher").glob("*.yaml") for k in read_yaml(p)}  # e.g. `jobs`
    known = sorted((set(config) | launchers) - {"defaults", "hydra"} | set(GROUPS))
    chosen = [a.partition("=")[2].split(",") for a in argv if re.match(r"\+?method=", a)]
    defaults = [d["method"] for d in config["defaults"] if isinstance(d, dict) and "method" in d]
    methods = chosen[-1] if chosen else ([] if any(a.startswith("experiment=") for a in argv) else defaults)
    for prefix, path, _ in overrides(argv):
        name = ".".join(path)
        if path[0] == "hydra":
            continue
        if path[0] not in known:
            raise UserError(f"unknown setting {path[0]!r}; {closest(path[0], known)}known: {', '.join(known)}")
        if isinstance(config.get(path[0]), dict) and len(path) > 1 and path[1] not in config[path[0]]:
            keys = [f"{path[0]}.{k}" for k in config[path[0]]]
            raise UserError(f"unknown setting {name!r}; {closest(name, keys)}known: {', '.join(keys)}")
        if path[0] == "method" and len(path) > 2 and methods:
            check_method_key(prefix, path, methods)
        if prefix in ("+", "++") and len(path) > 1 and path[:2] != ["method", "grid"]:
            raise UserError(f"{prefix}{name} adds a setting seabench does not read (only method.grid takes new "
                            f"keys); to change an existing one, drop the {prefix!r}")


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

    check_overrides(argv)
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

    from bench import cells, checks

    config = OmegaConf.to_container(cfg, resolve=True)
    hydra = HydraConfig.get()
    sweep = hydra.mode == RunMode.MULTIRUN
    try:
        checks.validate(config, method_section(hydra.runtime.choices["method"]))  # before any work
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

    from bench import allocation, job  # torch, timm ...: seconds of imports, after the checks
    from bench.data.augself import loader_options

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
