"""The table's statistics and cost, per shown record; records are paired by identity, never by display name.

A record is compared with its exact partner (bench.report.table.partner): the probe (`linear`, else AugSelf's
`augself_linear`) of the same backbone identity, protocol and dataset whose record agrees on the weights,
preprocessing, split fingerprints (so the same test examples, in the same order), protocol version and
precision.

Cost: a record's fit seconds, plus its share of each feature-cache entry it read. An entry's extraction
seconds are those the extracting record (cache `hit` false) timed for that split; they are divided evenly
among the shown records that read the entry.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from bench import results
from bench.report import stats

BASELINES = ("linear", "augself_linear")  # the probe every method is compared with, in order of preference


def predictions(record: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """[seeds, N] predicted classes and [N] labels, when the record kept them."""
    test = record["test"]
    if "predictions" not in test or "labels" not in test:
        return None
    return np.stack([results.unpack(p) for p in test["predictions"]]), results.unpack(test["labels"])


def paired(df: pd.DataFrame, records: dict[str, dict]) -> pd.DataFrame:
    """Per shown record: its 95% interval over seeds, its baseline, the difference to it (`paired_delta`, the
    same as the bootstrap's observed difference) and the paired test against it (when both kept predictions)."""
    rows = []
    for path, partner in zip(df["record"], df["partner"]):
        r = records[path]
        ci = stats.interval(r["test"]["score"])
        row = {"ci_lo": ci[0] if ci else np.nan, "ci_hi": ci[1] if ci else np.nan, "baseline": None,
               "paired_delta": np.nan, "paired_lo": np.nan, "paired_hi": np.nan, "paired_p": np.nan}
        b = records.get(partner) if isinstance(partner, str) else None
        if b is not None:  # Δ from the scores; the paired test needs the kept predictions
            row |= {"baseline": b["method"], "paired_delta": np.mean(r["test"]["score"]) - np.mean(b["test"]["score"])}
            mine, theirs = predictions(r), predictions(b)
            if mine is not None and theirs is not None and np.array_equal(mine[1], theirs[1]):
                test = stats.paired_bootstrap(mine[0], theirs[0], mine[1], metric=r["metric"])
                row |= {"paired_lo": test["lo"], "paired_hi": test["hi"], "paired_p": test["p"]}
        rows.append(row)
    out = df.assign(**pd.DataFrame(rows, index=df.index))
    out["significant"] = out["paired_p"] < stats.ALPHA
    return out


def cost(df: pd.DataFrame, records: dict[str, dict], every: list[dict]) -> pd.DataFrame:
    """Adds fit_s and extract_s (amortised) per shown record; `every` is every loaded record (the one that
    extracted an entry may be an older, not shown one)."""
    seconds = {}
    for r in every:
        for split, entry in (r.get("features") or {}).items():
            timed = r.get("timings", {}).get(f"features_{split}")
            if not entry.get("hit", True) and timed is not None:
                seconds.setdefault(entry["key"], timed)
    shown = [records[path] for path in df["record"]]
    readers = Counter(e["key"] for r in shown for e in (r.get("features") or {}).values())
    extract = [sum(seconds.get(e["key"], 0.0) / readers[e["key"]] for e in (r.get("features") or {}).values())
               for r in shown]
    fit = [r.get("timings", {}).get("fit", np.nan) for r in shown]
    return df.assign(fit_s=fit, extract_s=extract, device=[r.get("device") for r in shown])


def wilcoxon(df: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone identity, method, protocol) with a baseline: its Wilcoxon signed-rank test over datasets."""
    rows = []
    for key, group in df.dropna(subset=["baseline"]).groupby(["row", "method", "protocol"]):
        deltas = group["paired_delta"].dropna().tolist()
        rows.append(dict(zip(["row", "method", "protocol"], key)) | {"label": group["label"].iloc[0]}
                    | {"mean_delta": np.mean(deltas) if deltas else np.nan} | stats.wilcoxon(deltas))
    return pd.DataFrame(rows, columns=["row", "label", "method", "protocol", "mean_delta", "n", "p"])
