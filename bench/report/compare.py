"""The table's statistics and cost, per shown record; records are paired by identity, never by display name.

A record is compared with its exact partner (bench.report.table.partner): the probe (`linear`, else AugSelf's
`augself_linear`) of the same backbone identity, protocol and dataset whose record agrees on the weights,
preprocessing, split fingerprints (so the same test examples, in the same order), protocol version and
precision.

Cost (`cost`), one rule whatever the filter: a record's fit seconds, plus its share of each feature-cache
entry and each fitted flow it used. An entry's seconds are what it cost when it was made, as every record that
read it stores them (`extraction_seconds`; a flow's `fit_seconds` in its note), so a record whose extraction
ran under another results folder still carries it; they are divided evenly among the table's records (all
loaded, before any filter) that used the entry. Computed on every record, then filtered.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from bench import UserError, results
from bench.report import stats

BASELINES = ("linear", "augself_linear")  # the probe every method is compared with, in order of preference


def predictions(record: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """[seeds, N] predicted classes and [N] labels, when the record kept them."""
    test = record["test"]
    if "predictions" not in test or "labels" not in test:
        return None
    return np.stack([results.unpack(p) for p in test["predictions"]]), results.unpack(test["labels"])


def scores(record: dict, metric: str | None = None) -> list[float]:
    """The record's test scores per seed in its dataset's metric, or in `metric` (e.g. top1, which every
    record also keeps)."""
    if metric is None or metric == record["metric"]:
        return record["test"]["score"]
    if metric not in record["test"]:
        raise UserError(f"the record {record['path']} has no test {metric}; rerun it or drop --metric")
    return record["test"][metric]


def paired(df: pd.DataFrame, records: dict[str, dict], metric: str | None = None) -> pd.DataFrame:
    """Per row: its 95% interval over seeds (clipped to [0, 100], the metric's range; `ci_half` the
    unclipped half-width the cells print), its baseline, the difference to it (`paired_delta`, the same as
    the bootstrap's observed difference) and the paired test against it (when both kept predictions)."""
    rows = []
    for path, partner in zip(df["record"], df["partner"]):
        r = records[path]
        metric_r = metric or r["metric"]
        ci = stats.interval(scores(r, metric))
        row = {"ci_lo": max(0.0, ci[0]) if ci else np.nan, "ci_hi": min(100.0, ci[1]) if ci else np.nan,
               "ci_half": (ci[1] - ci[0]) / 2 if ci else np.nan, "baseline": None, "paired_delta": np.nan,
               "paired_lo": np.nan, "paired_hi": np.nan, "paired_p": np.nan, "tested": False}
        b = records.get(partner) if isinstance(partner, str) else None
        if b is not None:  # Δ from the scores; the paired test needs the kept predictions
            row |= {"baseline": b["method"], "paired_delta": np.mean(scores(r, metric)) - np.mean(scores(b, metric))}
            mine, theirs = predictions(r), predictions(b)
            if mine is not None and theirs is not None and np.array_equal(mine[1], theirs[1]):
                test = stats.paired_bootstrap(mine[0], theirs[0], mine[1], metric=metric_r)
                row |= {"paired_lo": test["lo"], "paired_hi": test["hi"], "paired_p": test["p"], "tested": True}
        rows.append(row)
    out = df.assign(**pd.DataFrame(rows, index=df.index))
    # None where untested (no partner, or no kept predictions): never a false 'not significant'
    out["significant"] = [bool(p < stats.ALPHA) if t else None for p, t in zip(out["paired_p"], out["tested"])]
    return out


def shares(readers: list[list[tuple[str, float | None]]]) -> list[float]:
    """Per record, its share of the entries it used: [(key, seconds the entry cost or None)] each. An
    entry's seconds are the first known among its readers, divided evenly among them (None known: 0)."""
    count, seconds = Counter(), {}
    for used in readers:
        for key, s in used:
            count[key] += 1
            if s is not None:
                seconds.setdefault(key, float(s))
    return [sum(seconds.get(k, 0.0) / count[k] for k, _ in used) for used in readers]


def cost(df: pd.DataFrame, records: dict[str, dict]) -> pd.DataFrame:
    """Adds fit_s and extract_s per row of the whole table (before any filter, so a row's cost is the same
    whatever is shown): extraction shared by the entries' readers (`shares`); a fitted flow's own fit
    seconds shared alike, in place of what loading or fitting it took within this record's fit."""
    shown = [records[path] for path in df["record"]]
    extraction = []
    for r in shown:
        used = []
        for split, entry in (r.get("features") or {}).items():
            timed = r.get("timings", {}).get(f"features_{split}") if not entry.get("hit", True) else None
            used.append((entry["key"], entry.get("extraction_seconds", timed)))
        extraction.append(used)
    flows = [[(n["key"], n.get("fit_seconds", None if n.get("hit") else n.get("seconds")))
              for n in (r.get("method_costs") or {}).get("flow_fits", [])] for r in shown]
    flow_share = shares(flows)
    fit = [r.get("timings", {}).get("fit", np.nan) - sum(n.get("seconds", 0.0) for n in
                                                        (r.get("method_costs") or {}).get("flow_fits", [])) + share
           for r, share in zip(shown, flow_share)]
    return df.assign(fit_s=fit, extract_s=shares(extraction), device=[r.get("device") for r in shown],
                     machine=[machine(r) for r in shown])


def machine(record: dict) -> str | None:
    """What makes the same run's numbers differ between machines: torch's thread count, its BLAS and the
    CPU's vector instructions (reductions split and ordered differently), as the record stores them."""
    facts = (record.get("provenance") or {}).get("numerics")
    if not facts:
        return None
    return f"{facts.get('threads')} threads, {facts.get('blas')}, {facts.get('cpu_capability')}"


def wilcoxon(df: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone identity, method, protocol) with a baseline on at least one dataset: its Wilcoxon
    signed-rank test over datasets, and its wins / ties / losses against the probe (a win: Δ > 0 and the
    paired test significant; a tie: tested, not significant; untested datasets counted apart)."""
    rows = []
    for key, group in df.dropna(subset=["baseline"]).groupby(["row", "method", "protocol"]):
        deltas = group["paired_delta"].dropna().tolist()
        tested = group[group["tested"]]
        sig = tested["significant"].astype(bool)
        rows.append(dict(zip(["row", "method", "protocol"], key)) | {"label": group["label"].iloc[0]}
                    | {"mean_delta": np.mean(deltas) if deltas else np.nan} | stats.wilcoxon(deltas)
                    | {"wins": int((sig & (tested["paired_delta"] > 0)).sum()),
                       "losses": int((sig & (tested["paired_delta"] < 0)).sum()), "ties": int((~sig).sum()),
                       "untested": int(len(group) - len(tested))})
    out = pd.DataFrame(rows, columns=["row", "label", "method", "protocol", "mean_delta", "n", "nonzero", "p",
                                      "min_p", "wins", "ties", "losses", "untested"])
    return out.sort_values(["label", "method", "protocol"], kind="stable").reset_index(drop=True)  # as the table
