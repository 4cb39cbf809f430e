"""Every method parameter has a valid range in its YAML (`ranges:`, issue 24 item 4), the forms mean what
bench/ranges.py says, and a range is a check, not part of a run's signature."""

import pytest

from bench import UserError, config, ranges, results

METHODS = config.choices("method")


@pytest.fixture(scope="module")
def composed():
    return {m: config.compose([f"method={m}"]) for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_every_parameter_of_every_method_has_a_range(composed, method):
    """A new method (or a new parameter) must say which values it takes: add it to the YAML's `ranges:`."""
    conf = composed[method]["method"]
    assert ranges.unranged(conf["params"], conf.get("ranges") or {}) == []
    assert set(conf.get("ranges") or {}) <= set(conf["params"]), "a range for a parameter that does not exist"


@pytest.mark.parametrize("method", METHODS)
def test_every_default_lies_in_its_range(composed, method):
    ranges.check_method(composed[method]["method"], composed[method]["method"]["ranges"])


@pytest.mark.parametrize("spec,inside,outside", [
    ("(0, inf)", [1e-9, 3, 1e30], [0, -1, float("nan"), float("inf"), True, "1", None]),
    ("[0, 1)", [0, 0.5], [1, -1e-9]),
    ("[0, 1]", [0, 1, 1.0], [1.5]),
    ("integer [1, inf)", [1, 10**9], [0, 1.0, 2.5, False]),
    ("null or (0, inf)", [None, 1.0], [0]),
    ("each (0, 1]", [[0.08, 1.0], []], [[0, 1], 0.5]),
    (["diag", "full"], ["diag"], ["spherical", None]),
    ([False, True], [False, True], [0, 1, "true"]),
])
def test_the_forms(spec, inside, outside):
    for value in inside:
        assert ranges.fits(value, spec), value
    for value in outside:
        assert not ranges.fits(value, spec), value


def test_the_words():
    assert ranges.describe("(0, inf)") == "a number in (0, inf)"
    assert ranges.describe("integer [1, inf)") == "an integer in [1, inf)"
    assert ranges.describe("null or [0, 0.5]") == "null or a number in [0, 0.5]"
    assert ranges.describe("each (0, 1]") == "a list of numbers, each in (0, 1]"
    assert ranges.describe([False, True]) == "one of false, true"
    for bad in ("0 < x", "[1, 0]", "[a, b]", "(0, 1"):
        with pytest.raises(ValueError):
            ranges.interval(bad)
    assert ranges.unranged({"a": 1, "b": {"c": 1, "d": 2}, "e": 3}, {"a": "(0, 1", "b": {"c": "[0, 1]"},
                                                                     "e": "[0, 1]"}) == ["a", "b.d"]


def test_a_mapping_takes_only_its_keys():
    spec = {"crop": "[0, inf)", "color": "[0, inf)"}
    ranges.check("w", {"crop": 0.5}, spec)
    with pytest.raises(UserError, match="w has no key 'rotation'; known: crop, color"):
        ranges.check("w", {"rotation": 1.0}, spec)
    with pytest.raises(UserError, match=r"w.color must be a number in \[0, inf\), not -1"):
        ranges.check("w", {"color": -1}, spec)


def test_a_range_is_not_part_of_the_signature(composed):
    """Tightening a range (or adding the block) changes no record's signature or cell."""
    conf = composed["sea"]
    loose = {**conf, "method": {**conf["method"], "ranges": {**conf["method"]["ranges"], "eta": "[0, 2]"}}}
    bare = {**conf, "method": {k: v for k, v in conf["method"].items() if k != "ranges"}}
    assert results.cell_key(conf) == results.cell_key(loose) == results.cell_key(bare)
    assert results.signature(conf, {}, {}) == results.signature(bare, {}, {})
