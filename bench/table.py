"""Records -> the comparison table: rows (backbone, method), columns the datasets + their average.

A cell is the mean ± std over seeds of the dataset's metric (test split), with the difference to the
linear probe of the same weights, data, protocol version and precision in parentheses (where there is no
such record, no difference, and a note under the table says why); the best mean of each column is in
bold. Rows are backbone identities (weights' hash, preprocessing, overrides), never display names. When
a cell has several records (e.g. a narrowed grid, then the full one), the newest is used and the CSV
names the record each number comes from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from bench import UserError, results

log = logging.getLogger(__name__)

# column order of the 11-task transfer table (Kornblith et al. 2019; AugSelf); other datasets follow
ORDER = ["cifar10", "cifar100", "food101", "mit67", "pets", "flowers102", "caltech101", "cars", "aircraft",
         "dtd", "sun397"]
ROW = ["row", "method", "protocol"]  # `row`: the backbone's identity (short hash), never its display name
# a method is compared with the linear probe whose record agrees on all of these (its exact partner)
PAIR = ["weights", "preprocess", "data", "protocol_version", "precision"]


def short_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def identity(r: dict) -> dict:
    """What makes a record's features, as table columns. A row is one backbone identity: its name, weights'
    hash, configured preprocessing and command-line overrides; for given features (no weights) the files
    themselves. The exact-partner facts (`PAIR`) add the split fingerprints, the protocol's version and
    the device's precision (older records lack the last: it reads as unknown)."""
    overrides = r.get("backbone_overrides") or []
    row = {"name": r["backbone"], "weights": r.get("weights_sha256"), "overrides": overrides,
           "preprocess": (r.get("config") or {}).get("backbone", {}).get("preprocess")}
    if r.get("weights_sha256") is None:
        row["data"] = r["splits"]
    label = (r.get("backbone_label") or r["backbone"]) + (f" [{', '.join(overrides)}]" if overrides else "")
    precision = r.get("precision")
    return {"row": short_hash(row), "label": label,
            "weights": (r.get("weights_sha256") or "")[:12] or None,
            "preprocess": json.dumps(r["preprocess"], sort_keys=True) if r.get("preprocess") else None,
            "data": short_hash(r["splits"]), "protocol_version": r.get("protocol_version"),
            "precision": f"{precision['device']}, {precision['extract']} extraction" if precision else None}


def distinct_labels(df: pd.DataFrame) -> pd.Series:
    """Each row's label, with its identity's hash appended where one label would name several rows."""
    rows_per_label = df.groupby("label")["row"].transform("nunique")
    return df["label"].where(rows_per_label == 1, df["label"] + " #" + df["row"].str[:6])


def same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) if pd.isna(a) or pd.isna(b) else a == b


def linear_partner(df: pd.DataFrame, row) -> tuple[float | None, str]:
    """(the exact partner's mean, "") or (None, why there is none) for a non-linear row."""
    cell = (df.method == "linear") & (df.protocol == row["protocol"]) & (df.dataset == row["dataset"])
    mine = df[cell & (df.row == row["row"])]
    if mine.empty:
        if (cell & (df.backbone == row["backbone"])).any():
            return None, (f"the linear probe of backbone {row['backbone']!r} ran with other weights, "
                          f"preprocessing or data (another row)")
        return None, "no linear probe record of this backbone, dataset and protocol"
    partner = mine.iloc[0]
    differ = [k for k in PAIR if not same(partner[k], row[k])]
    if differ:
        return None, f"its linear probe's record differs in {', '.join(differ)}"
    return partner["mean"], ""


def deltas(df: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Δ vs the exact linear partner for every non-linear row, and one note per row that has none."""
    delta, notes = pd.Series(float("nan"), index=df.index), []
    for i, row in df[df.method != "linear"].iterrows():
        mean, why = linear_partner(df, row)
        if mean is None:
            notes.append(f"{row['label']} / {row['method']} / {row['protocol']} / {row['dataset']}: {why}")
        else:
            delta[i] = round(row["mean"] - mean, 4)
    return delta, notes


def frame(records: list[dict]) -> pd.DataFrame:
    """One row per (backbone identity, method, protocol, dataset): the newest record's numbers, with its Δ
    against its exact linear partner (`deltas`); `df.attrs["notes"]` says where there is none and why."""
    rows = [{"backbone": r["backbone"], **identity(r), "method": r["method"],
             "protocol": r["protocol"], "dataset": r["dataset"], "metric": r["metric"],
             "mean": pd.Series(r["test"]["score"]).mean(),
             "std": pd.Series(r["test"]["score"]).std() if len(r["test"]["score"]) > 1 else 0.0,
             "seeds": len(r["test"]["score"]), "chosen": r["chosen"], "edge": r["edge"],
             "max_iter_hit": bool(r.get("max_iter_hit")),
             "fit_s": r["timings"].get("fit"), "created": r["created"], "record": r["path"]} for r in records]
    df = pd.DataFrame(rows).sort_values("created", kind="stable")
    df["label"] = distinct_labels(df)
    df["records"] = df.groupby(ROW + ["dataset"])["record"].transform("count")
    for _, row in df[df.records > 1].drop_duplicates(ROW + ["dataset"], keep="last").iterrows():
        log.warning("%s / %s / %s / %s has %d records (other grids or settings); the table shows the newest, %s",
                    row.label, row.method, row.protocol, row.dataset, row.records, row.record)
    df = df.drop_duplicates(ROW + ["dataset"], keep="last").reset_index(drop=True)
    df["delta_vs_linear"], notes = deltas(df)
    df.attrs["notes"] = notes
    return df


def cell(row, best: bool) -> str:
    text = f"{row['mean']:.2f}" + (f" ± {row['std']:.2f}" if row["seeds"] > 1 else "")
    text = (f"**{text}**" if best else text) + ("†" if row["edge"] else "") + ("‡" if row["max_iter_hit"] else "")
    if row["method"] != "linear" and pd.notna(row["delta_vs_linear"]):
        text += f" ({row['delta_vs_linear']:+.2f})"
    return text


def markdown(df: pd.DataFrame) -> str:
    datasets = [d for d in ORDER if d in set(df.dataset)] + sorted(set(df.dataset) - set(ORDER))
    best = df.groupby("dataset")["mean"].transform("max") == df["mean"]
    wide, labels = {}, dict(zip(df.row, df.label))
    for i, row in df.iterrows():
        wide.setdefault(tuple(row[ROW]), {})[row["dataset"]] = cell(row, best[i])
    means = df.groupby(ROW)["mean"].agg(["mean", "count"])
    lines = []
    for key, cells in sorted(wide.items(), key=lambda item: (labels[item[0][0]], *item[0][1:])):
        avg, count = means.loc[key]
        average = f"{avg:.2f}" + ("" if count == len(datasets) else f" ({int(count)}/{len(datasets)})")
        shown = {"backbone": labels[key[0]], "method": key[1], "protocol": key[2]}
        lines.append(shown | {d: cells.get(d, "–") for d in datasets} | {"average": average})
    metrics = df.groupby("dataset")["metric"].first()
    note = ", ".join(f"{d}: {metrics[d]}" for d in datasets)
    return (pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
            + f"\n\nTest split, mean ± std over seeds, (Δ vs the linear probe of the same weights, data, protocol"
            f" version and precision); † the val split chose a value on the edge of its grid; ‡ a fit behind the number"
            f" stopped at its iteration limit (the record's max_iter_hit). Metric per dataset: {note}." + notes(df.attrs.get("notes", [])))


def notes(lines: list[str]) -> str:
    if not lines:
        return ""
    return "\n\nNo Δ where no linear probe record is an exact partner:\n" + "".join(f"\n- {n}" for n in lines)


def build(results_dir: Path, out_dir: Path) -> str:
    records = results.load_all(results_dir)
    if not records:
        raise UserError(f"no run records under {Path(results_dir) / 'runs'}: run `seabench run ...` first")
    df = frame(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(df)
    for name, content in [("table.md", text + "\n"), ("table.csv", df.to_csv(index=False))]:
        results.write_text(out_dir / name, content)
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seabench table", description="Build the comparison table.")
    parser.add_argument("--results-dir", type=Path, default=Path("results"), help="where the records are")
    parser.add_argument("--out-dir", type=Path, default=None, help="where table.md/.csv go (default: results dir)")
    args = parser.parse_args(argv)
    print(build(args.results_dir, args.out_dir or args.results_dir))
    return 0
