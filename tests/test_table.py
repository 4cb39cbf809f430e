"""The table on hand-made records: means, std, the newest record per cell, Δ only against an exact linear
partner (same weights, data, protocol version and precision), rows keyed by identity, missing cells."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from bench import results
from bench.report import table

CPU = {"device": "cpu", "extract": "float32"}
SPLITS = {"train": "t" * 64, "val": "v" * 64, "test": "s" * 64}


def record(root: Path, *, backbone="pixels", label=None, method="linear", dataset="digits", scores=(90.0,),
           weights="a" * 64, splits=SPLITS, preprocess=None, overrides=(), precision=CPU, created="2026-11-01T10:00",
           protocol_version=1, protocol="selection") -> dict:
    """A record as bench.job writes it, with only the fields the table reads."""
    r = {"backbone": backbone, "backbone_label": label, "method": method, "protocol": protocol,
         "dataset": dataset, "metric": "top1", "test": {"score": list(scores)}, "chosen": {}, "edge": {},
         "timings": {"fit": 1.0}, "created": created, "weights_sha256": weights, "splits": splits,
         "preprocess": preprocess or {"resize": 8, "crop": 8}, "backbone_overrides": list(overrides),
         "precision": precision, "protocol_version": protocol_version,
         "config": {"backbone": {"name": backbone, "preprocess": {"resize": None, "crop": None}}}}
    if weights is None:  # given features: no backbone, no preprocessing
        r["preprocess"], r["config"] = None, {"backbone": {"name": "given", "label": "given features"}}
    path = root / "runs" / dataset / backbone / f"{method}-{protocol}-{len(list(root.rglob('*.json')))}.json"
    results.write(path, r)
    return r


def build(root: Path) -> tuple[str, dict]:
    """The Markdown table and {(backbone label, method): row cells}."""
    text = table.build(root, root)
    first = text.split("\n\n")[0]  # the table (the one against the probe comes later)
    lines = [line for line in first.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows[(cells["backbone"], cells["method"])] = cells
    return text, rows


def test_delta_and_interval_against_the_exact_partner(tmp_path):
    record(tmp_path, scores=(90.0,))
    record(tmp_path, method="sea", scores=(91.0, 93.0, 95.0))
    text, rows = build(tmp_path)
    assert rows[("pixels", "linear")]["digits"] == "90.00"
    # 95% Student-t half-width of 91, 93, 95: t(0.975, 2) * 2 / sqrt(3) = 4.303 * 1.155 = 4.97
    assert rows[("pixels", "sea")]["digits"] == "**93.00 ± 4.97** (+3.00)"
    assert "No Δ" not in text
    csv = pd.read_csv(tmp_path / "table.csv").set_index("method")
    assert csv.loc["sea", "delta_vs_linear"] == 3.0 and pd.isna(csv.loc["linear", "delta_vs_linear"])


def test_the_newest_record_of_a_cell_is_shown_and_the_others_named(tmp_path, caplog):
    record(tmp_path, scores=(80.0,), created="2026-11-01T10:00")
    record(tmp_path, scores=(85.0,), created="2026-11-03T10:00")
    record(tmp_path, scores=(70.0,), created="2026-11-02T10:00")
    record(tmp_path, method="sea", scores=(88.0,), created="2026-11-02T10:00")
    with caplog.at_level(logging.WARNING, logger="bench.report.table"):
        _, rows = build(tmp_path)
    assert rows[("pixels", "linear")]["digits"] == "85.00"
    assert rows[("pixels", "sea")]["digits"] == "**88.00** (+3.00)"
    assert "has 3 records" in caplog.text


def test_two_local_checkpoints_are_two_rows_and_never_compared(tmp_path):
    local = {"backbone": "local", "label": "local checkpoint"}
    record(tmp_path, **local, weights="a" * 64, scores=(70.0,))
    record(tmp_path, **local, weights="b" * 64, method="sea", scores=(90.0,))
    text, rows = build(tmp_path)
    (linear,) = [k for k in rows if k[1] == "linear"]
    (sea,) = [k for k in rows if k[1] == "sea"]
    assert linear[0] != sea[0] and linear[0].startswith("local checkpoint #")
    assert rows[sea]["digits"] == "**90.00**"  # no Δ against other weights
    assert f"{sea[0]} / sea / selection / digits: the linear probe of backbone 'local' ran with other" in text


def test_given_features_from_other_files_are_never_compared(tmp_path):
    given = {"backbone": "given", "label": "given features", "dataset": "features", "weights": None}
    record(tmp_path, **given, splits={"train": "1" * 64, "test": "2" * 64}, scores=(60.0,))
    record(tmp_path, **given, splits={"train": "3" * 64, "test": "4" * 64}, method="sea", scores=(80.0,))
    record(tmp_path, **given, splits={"train": "3" * 64, "test": "4" * 64}, scores=(75.0,))
    text, rows = build(tmp_path)
    assert len(rows) == 3 and all(k[0].startswith("given features #") for k in rows)
    sea = next(k for k in rows if k[1] == "sea")
    assert rows[sea]["features"] == "**80.00** (+5.00)"  # its partner: the linear probe on the same files
    assert "No Δ" not in text


@pytest.mark.parametrize("change,field", [({"splits": {**SPLITS, "val": "x" * 64}}, "data"),
                                          ({"protocol_version": 2}, "protocol_version"),
                                          ({"precision": {"device": "cuda", "extract": "float16 autocast"}},
                                           "precision")])
def test_a_partner_that_differs_gives_no_delta_and_says_in_what(tmp_path, change, field):
    record(tmp_path, scores=(70.0,))
    record(tmp_path, method="sea", scores=(90.0,), **change)
    text, rows = build(tmp_path)
    assert rows[("pixels", "sea")]["digits"] == "**90.00**"
    assert f"pixels / sea / selection / digits: its linear probe's record differs in {field}" in text


def test_missing_cells_and_a_method_without_linear_probe(tmp_path):
    record(tmp_path, dataset="digits", scores=(90.0,))
    record(tmp_path, dataset="dtd", method="sea", scores=(50.0,))
    text, rows = build(tmp_path)
    assert rows[("pixels", "linear")]["dtd"] == "–" and rows[("pixels", "linear")]["average"] == "90.00 (1/2)"
    assert rows[("pixels", "sea")]["digits"] == "–" and rows[("pixels", "sea")]["dtd"] == "**50.00**"
    assert "pixels / sea / selection / dtd: no linear probe record of this backbone, dataset and protocol" in text


def test_a_backbone_override_is_part_of_the_label(tmp_path):
    record(tmp_path, scores=(89.0,), preprocess={"resize": 8, "crop": 8})
    record(tmp_path, scores=(90.0,), preprocess={"resize": 28, "crop": 28},
           overrides=["preprocess.crop=28", "preprocess.resize=28"])
    _, rows = build(tmp_path)
    assert rows[("pixels", "linear")]["digits"] == "89.00"
    assert rows[("pixels [preprocess.crop=28, preprocess.resize=28]", "linear")]["digits"] == "**90.00**"
    assert json.loads(json.dumps(table.frame(results.load_all(tmp_path)).label.tolist()))  # plain strings
