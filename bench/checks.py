"""Checks of a run's settings that need no data, no model and no torch: they run first, in well under a
second, so that a typo is refused before minutes of imports, extraction or fitting (DESIGN section 10)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from bench import UserError, temps
from bench.metrics import METRICS

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


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


def closest(name: str, known) -> str:
    near = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {near[0]!r}? " if near else ""


def check_method(method: dict, defaults: dict | None) -> None:
    """Hyperparameters keep the kind of value their YAML gives them; grid keys are hyperparameters."""
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
            raise UserError(f"method.grid.{key} must be a non-empty list (e.g. method.grid.{key}=[{values}])")
        like = defaults.get(key, params[key])
        if bad := [v for v in values if wrong(v, like)]:
            raise UserError(f"method.grid.{key} must hold {kind(like) or 'single values'}, not {bad[0]!r}")


def validate(config: dict, method_defaults: dict | None = None) -> None:
    """Check what would otherwise fail deep inside a run, or only after all its work.

    `method_defaults`: the method's params as its YAML gives them (the kinds of value each must keep)."""
    metric = config["dataset"]["metric"]
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r} for dataset {config['dataset']['name']}; known: {sorted(METRICS)}")
    check_method(config["method"], method_defaults)
    if isinstance(config["seeds"], bool) or not isinstance(config["seeds"], int) or config["seeds"] < 1:
        raise UserError(f"seeds must be a positive integer, not {config['seeds']!r}")
    for key, low in [("batch_size", 1), ("num_workers", 0)]:
        value = config["extract"][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"extract.{key} must be an integer >= {low}, not {value!r}")
    if not DEVICE.fullmatch(str(config["device"])):
        raise UserError(f"device {config['device']!r} is not supported; use auto, cpu, cuda or cuda:N")
    temps.check_writable(Path(config["results_dir"]), "results_dir")
