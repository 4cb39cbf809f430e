"""The valid range of a method's hyperparameters: the `ranges:` block of conf/method/<name>.yaml (one place, next
to `params` and `grid`), and the check of a value against it, run by bench.config before any work (and before
torch is imported), so that `lr=[0]`, `epochs=0` or `penalty=-1` are refused in one sentence that gives the
range instead of running to a number that means nothing.

The forms a range takes in the YAML:

    "(0, inf)"   "[0, 1)"   "[1, 100]"   a number in the interval: [ ] include their end, ( ) exclude it
    "integer [1, inf)"                   an integer in the interval
    "null or [0, inf)"                   also null (a setting that is off)
    "each (0, 1]"                        a list of numbers, each in the interval (a crop's scale range)
    [diag, full, lowrank]                one of these values (a YAML list; [false, true] for a switch)
    {key: range, ...}                    a mapping: each key its own range, and no other keys
    {"null": true, key: range, ...}      the same mapping, or null (a block that is off)

A range is not part of a run's signature (bench.results): tightening one changes no record.
"""

from __future__ import annotations

import math
import re

from bench import UserError

INTERVAL = re.compile(r"(?P<null>null or )?(?P<integer>integer )?(?P<each>each )?"
                      r"(?P<open>[\[(])\s*(?P<low>[^,\s]+)\s*,\s*(?P<high>[^\])\s]+)\s*(?P<close>[\])])")


def interval(spec: str) -> dict:
    """The parts of a range written as text; ValueError when it is not one of the forms above."""
    match = INTERVAL.fullmatch(spec.strip())
    if not match:
        raise ValueError(f"{spec!r} is not a range (forms: '(0, inf)', 'integer [1, inf)', 'null or [0, 1]', "
                         f"'each (0, 1]')")
    low, high = float(match["low"]), float(match["high"])  # ValueError for a word that is not a number
    if not low <= high:
        raise ValueError(f"{spec!r} is an empty range")
    return {**match.groupdict(), "low": low, "high": high}


def describe(spec) -> str:
    """A range in words, to follow 'must be': 'a number in (0, inf)', 'one of diag, full'."""
    if isinstance(spec, list):
        return "one of " + ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in spec)
    if isinstance(spec, dict):
        keys = ", ".join(k for k in spec if k != "null")
        return ("null or " if spec.get("null") is True else "") + "a mapping with the keys " + keys
    part = interval(spec)
    bounds = f"{part['open']}{part['low']:g}, {part['high']:g}{part['close']}"
    body = f"{'an integer' if part['integer'] else 'a number'} in {bounds}"
    if part["each"]:
        body = f"a list of {'integers' if part['integer'] else 'numbers'}, each in {bounds}"
    return f"null or {body}" if part["null"] else body


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def inside(value, part: dict) -> bool:
    if not number(value) or (part["integer"] and not isinstance(value, int)) or math.isnan(value):
        return False
    above = value > part["low"] or (part["open"] == "[" and value == part["low"])
    below = value < part["high"] or (part["close"] == "]" and value == part["high"])
    return above and below


def fits(value, spec) -> bool:
    """Whether `value` lies in the range `spec` (a mapping's keys are checked by `check`)."""
    if isinstance(spec, list):
        return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in spec)
    part = interval(spec)
    if value is None:
        return bool(part["null"])
    if part["each"]:
        return isinstance(value, list) and all(inside(v, part) for v in value)
    return inside(value, part)


def check(name: str, value, spec, *, each: bool = False) -> None:
    """One sentence when `value` (of the setting `name`) is outside `spec`; `each`: `value` is one of a grid's."""
    if isinstance(spec, dict):
        if value is None and spec.get("null") is True:
            return
        if not isinstance(value, dict):
            raise UserError(f"{name} must be {describe(spec)}, not {value!r}")
        if unknown := [k for k in value if k not in spec or k == "null"]:
            raise UserError(f"{name} has no key {unknown[0]!r}; known: {', '.join(k for k in spec if k != 'null')}")
        for key, sub in value.items():
            check(f"{name}.{key}", sub, spec[key])
        return
    if not fits(value, spec):
        what = f"each value of {name}" if each else name
        raise UserError(f"{what} must be {describe(spec)}, not {value!r}")


def check_method(method: dict, ranges: dict) -> None:
    """Every param and every grid value of `method` in its range (keys without a range pass)."""
    for key, value in method["params"].items():
        if key in ranges:
            check(f"method.params.{key}", value, ranges[key])
    for key, values in method["grid"].items():
        if key in ranges:
            for value in values:
                check(f"method.grid.{key}", value, ranges[key], each=True)


def unranged(params: dict, ranges: dict, prefix: str = "") -> list[str]:
    """The params (dotted names, into mappings) that have no range, or a range that is not one of the forms."""
    out = []
    for key, value in params.items():
        name, spec = prefix + key, ranges.get(key)
        if spec is None:
            out.append(name)
        elif isinstance(spec, dict):
            if isinstance(value, dict):
                out += unranged(value, spec, name + ".")
            elif not (value is None and spec.get("null") is True):
                out.append(name)
        elif not isinstance(spec, list):
            try:
                interval(spec)
            except (ValueError, TypeError):
                out.append(name)
    return out
