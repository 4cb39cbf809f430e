"""The config tree (`conf/`) and the checks of what a user asks of it: the one module that the CLI, `seabench
status` and the tests share for it, so that no two of them import each other.

Everything here runs before torch is imported, in well under a second, so that a typo is refused before
minutes of imports, extraction or fitting (DESIGN section 10): the override checks read the YAML files
themselves (before Hydra), `validate` checks a composed run's settings (plain values, never a DictConfig).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from bench import UserError, ranges, temps
from bench.metrics import METRICS

CONF = Path(__file__).resolve().parents[1] / "conf"  # the registry: a choice exists when its YAML exists
GROUPS = ("backbone", "dataset", "method", "protocol", "experiment")
MODES = {"-m": "-m", "--multirun": "-m", "-c": "--cfg", "--cfg": "--cfg", "-i": "--info", "--info": "--info"}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
MAX_SEEDS = 100  # seeds of a stochastic method (a table reports their mean and spread; 5-10 is usual)


def logspace(start, stop, num) -> list[float]:
    """`${logspace:-6,5,45}` in a config: `num` values from 10**start to 10**stop, log-spaced."""
    return [10.0 ** (start + (stop - start) * i / (int(num) - 1)) for i in range(int(num))]


def folder_name(path) -> str | None:
    """`${folder_name:${.load.path}}` in dataset/folder.yaml: a folder dataset is named after its folder
    (/data/mytask -> mytask) when the config is composed, so that a sweep and `status` know the name too."""
    return Path(str(path)).expanduser().resolve().name if path else None


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    for name, function in [("logspace", logspace), ("folder_name", folder_name)]:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


def compose(overrides: list[str] = ()) -> dict:
    """conf/config.yaml with `overrides`, resolved to plain values (what `seabench run` hands to bench.job)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=list(overrides)), resolve=True)


def choices(group: str) -> list[str]:
    """The known choices of a config group: its YAML files' names."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def closest(name: str, known) -> str:
    near = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {near[0]!r}? " if near else ""


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


def check_choices(argv: list[str]) -> None:
    """One sentence for an unknown group choice (`dataset=nope`, or one of a sweep's `a,b`), before Hydra."""
    for arg in argv:
        group, _, value = arg.lstrip("+").partition("=")
        if group in GROUPS and value and "(" not in value:  # leave Hydra's sweep functions to Hydra
            known = choices(group)
            for choice in value.split(","):
                if choice not in known and choice != "null":
                    raise UserError(f"unknown {group} {choice!r}; {closest(choice, known)}known: {', '.join(known)}")


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
    if lacking := [m for m in known if key not in method_section(m)]:  # a sweep sets it in every cell
        having = [m for m in known if m not in lacking]
        raise UserError(f"{'.'.join(path[:3])} is a hyperparameter of method {', '.join(having)} but not of "
                        f"{', '.join(lacking)}, and a sweep sets it in every cell: sweep them in separate commands, "
                        f"`seabench run -m method={','.join(having)} {prefix}{name}=...` and "
                        f"`seabench run -m method={','.join(lacking)}`")
    if path[1] == "grid" and not prefix and any(key not in method_section(m, "grid") for m in known):
        raise UserError(f"method {', '.join(known)} does not sweep {key} by default: add it to the grid with "
                        f"+{name}=[...]")


def experiment_sweep(name: str) -> dict:
    """What an experiment sweeps (its `hydra.sweeper.params`: group -> 'a,b,c'); {} when it is one run."""
    path = CONF / "experiment" / f"{name}.yaml"
    conf = read_yaml(path) if path.is_file() else {}
    return ((conf.get("hydra") or {}).get("sweeper") or {}).get("params") or {}


def experiment_methods(name: str, argv: list[str]) -> list[str]:
    """The methods an experiment's sweep runs (its sweeper's `method:` list), when `argv` is a sweep; else []."""
    if not {"-m", "--multirun"} & set(argv):
        return []
    return [m.strip() for m in str(experiment_sweep(name).get("method", "")).split(",") if m.strip()]


def check_syntax(argv: list[str]) -> None:
    """Each override in Hydra's grammar, or one sentence on how to quote it (an unquoted space, a non-ASCII
    letter in a path...), instead of the parser's paragraph."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if not arg.startswith("-"):
            try:
                parser.parse_overrides([arg])
            except OverrideParseException:
                key, _, value = arg.partition("=")
                raise UserError(f"cannot read the override {arg!r}: Hydra's grammar takes spaces, non-ASCII "
                                f"letters and most punctuation only in quotes; write \"{key}='{value}'\" "
                                f"(the outer quotes are the shell's)") from None


def check_mode(argv: list[str]) -> None:
    """An experiment that is a sweep runs with -m (without it, Hydra runs the default config once)."""
    for arg in argv:
        if arg.startswith("experiment=") and not {"-m", "--multirun"} & set(argv):
            name = arg.partition("=")[2]
            if swept := experiment_sweep(name):
                raise UserError(f"experiment={name} is a sweep (over {', '.join(swept)}): run it with -m, "
                                f"`seabench run -m {' '.join(argv)}`")


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
    experiments = [a.partition("=")[2] for a in argv if a.startswith("experiment=")]
    methods = chosen[-1] if chosen else experiment_methods(experiments[-1], argv) if experiments else defaults
    for prefix, path, _ in overrides(argv):
        name = ".".join(path)
        if path[0] == "hydra":
            continue
        if path[0] not in known:
            raise UserError(f"unknown setting {path[0]!r}; {closest(path[0], known)}known: {', '.join(known)}")
        if isinstance(config.get(path[0]), dict) and len(path) > 1 and path[1] not in config[path[0]]:
            keys = [f"{path[0]}.{k}" for k in config[path[0]]]
            raise UserError(f"unknown setting {name!r}; {closest(name, keys)}known: {', '.join(keys)}")
        if path[:2] == ["method", "ranges"]:
            raise UserError(f"{name} is a valid range, fixed beside the method's params in conf/method/*.yaml, "
                            f"not a setting")
        if path[0] == "method" and len(path) > 2 and methods:
            check_method_key(prefix, path, methods)
        if prefix in ("+", "++") and len(path) > 1 and path[:2] != ["method", "grid"]:
            raise UserError(f"{prefix}{name} adds a setting seabench does not read (only method.grid takes new "
                            f"keys); to change an existing one, drop the {prefix!r}")


def kind(value) -> str | None:
    """What a hyperparameter value is, in words; None for null, which stands for anything."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true or false"
    return "a number" if isinstance(value, (int, float)) else "text" if isinstance(value, str) else "a single value"


def wrong(value, like) -> bool:
    """True when `value` cannot stand where `like` stands (text for a number, a list for a single value...).
    A structured default (a crop's scale range, an auxiliary loss's settings) takes a value of its own type;
    with no default to compare (`like` None) only the kind of a single value is checked."""
    if isinstance(like, (list, dict)) or (like is None and isinstance(value, (list, dict))):
        return like is not None and not isinstance(value, type(like))
    return kind(value) == "a single value" or (None not in (kind(value), kind(like)) and kind(value) != kind(like))


def check_method(method: dict, defaults: dict | None) -> None:
    """Hyperparameters keep the kind of value their YAML gives them; grid keys are hyperparameters; every value
    lies in the range the method's YAML gives it (`ranges:`, bench.ranges)."""
    params, defaults = method["params"], defaults or {}
    for key, value in params.items():
        if wrong(value, defaults.get(key)):
            raise UserError(f"method.params.{key} must be {kind(defaults.get(key)) or 'a single value'}, "
                            f"not {value!r}")
    for key, values in method["grid"].items():
        if key not in params:
            raise UserError(f"method.grid.{key} is not a hyperparameter of method {method['name']}; "
                            f"{closest(key, params)}known: {', '.join(params)}")
        if not isinstance(values, list) or not values:
            example = params[key] if isinstance(values, list) else values  # [] -> the param's own value
            example = str(example).lower() if isinstance(example, bool) else example
            raise UserError(f"method.grid.{key} must be a non-empty list (e.g. method.grid.{key}=[{example}])")
        like = defaults.get(key, params[key])
        if bad := [v for v in values if wrong(v, like)]:
            raise UserError(f"method.grid.{key} must hold {kind(like) or 'single values'}, not {bad[0]!r}")
    ranges.check_method(method, method.get("ranges") or {})
    swept = [key for key, values in method["grid"].items() if len(values) > 1 and key != "penalty"]
    if "early_end" in params and (params["early_end"] or "early_end" in method["grid"]) and swept:
        raise UserError(f"method.params.early_end ends a sweep over method.grid.penalty alone; this grid also "
                        f"sweeps {', '.join(swept)}")


def check_dataset(dataset: dict, protocol: dict) -> None:
    """A dataset has a name (a folder dataset: its path), and a carved val split is a share of each class
    strictly between none and all (the carving rule takes at least one example of each class)."""
    load = dataset.get("load") or {}
    if not dataset.get("name"):
        if "path" in load:
            raise UserError("dataset=folder needs dataset.load.path=<folder with train/ and test/ sub-folders>")
        raise UserError("the dataset has no name: set dataset.name=...")
    for name, value in [("dataset.load.val_fraction", load.get("val_fraction")),
                        ("protocol.val_fraction", protocol.get("val_fraction"))]:
        if value is not None:
            ranges.check(name, value, "(0, 1)")
    if load.get("val_per_class") is not None:
        ranges.check("dataset.load.val_per_class", load["val_per_class"], "integer [1, inf)")


def validate(config: dict, method_defaults: dict | None = None) -> None:
    """Check what would otherwise fail deep inside a run, or only after all its work.

    `method_defaults`: the method's params as its YAML gives them (the kinds of value each must keep)."""
    metric = config["dataset"]["metric"]
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r} for dataset {config['dataset']['name']}; known: {sorted(METRICS)}")
    check_method(config["method"], method_defaults)
    if config["method"]["params"].get("early_end") and config["protocol"]["name"] == "reference":
        raise UserError("method.params.early_end ends a sweep over the grid on val; protocol=reference fits the "
                        "fixed params with no val: leave early_end at 0")
    check_dataset(config["dataset"], config["protocol"])
    if isinstance(config["seeds"], bool) or not isinstance(config["seeds"], int) or config["seeds"] < 1:
        raise UserError(f"seeds must be a positive integer, not {config['seeds']!r}")
    if config["seeds"] > MAX_SEEDS:  # each seed is a head of every grid point, held at once (1e6: 46 GB)
        raise UserError(f"seeds must be an integer in [1, {MAX_SEEDS}], not {config['seeds']!r}")
    for key, low in [("batch_size", 1), ("num_workers", 0)]:
        value = config["extract"][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"extract.{key} must be an integer >= {low}, not {value!r}")
    for key, spec in [("lock_stale_s", "(0, inf)"), ("amp", [False, True])]:  # seconds; a switch
        if key in config["extract"]:
            ranges.check(f"extract.{key}", config["extract"][key], spec)
    if not DEVICE.fullmatch(str(config["device"])):
        raise UserError(f"device {config['device']!r} is not supported; use auto, cpu, cuda or cuda:N")
    if config.get("fingerprint", "stat") not in ("stat", "content"):
        raise UserError(f"fingerprint must be stat or content, not {config['fingerprint']!r}")
    temps.check_writable(Path(config["results_dir"]), "results_dir")
