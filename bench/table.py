"""Records -> the comparison table: rows (backbone, method), columns the datasets + their average.

A cell is the mean ± std over seeds of the dataset's metric (test split), with the difference to the
linear probe of the same backbone in parentheses; the best mean of each column is in bold. When a
cell has several records (e.g. a narrowed grid, then the full one), the newest is used and the CSV
names the record each number comes from.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from bench import UserError, results, temps

log = logging.getLogger(__name__)

# column order of the 11-task transfer table (Kornblith et al. 2019; AugSelf); other datasets follow
ORDER = ["cifar10", "cifar100", "food101", "mit67", "pets", "flowers102", "caltech101", "cars", "aircraft",
         "dtd", "sun397"]
ROW = ["backbone", "method", "protocol"]


def frame(records: list[dict]) -> pd.DataFrame:
    """One row per (backbone, method, protocol, dataset): the newest record's numbers. Rows are keyed by
    the backbone's name; its label is what the table shows."""
    rows = [{"backbone": r["backbone"], "label": r.get("backbone_label") or r["backbone"], "method": r["method"],
             "protocol": r["protocol"], "dataset": r["dataset"], "metric": r["metric"],
             "mean": pd.Series(r["test"]["score"]).mean(),
             "std": pd.Series(r["test"]["score"]).std() if len(r["test"]["score"]) > 1 else 0.0,
             "seeds": len(r["test"]["score"]), "chosen": r["chosen"], "edge": r["edge"],
             "fit_s": r["timings"].get("fit"), "created": r["created"], "record": r["path"]} for r in records]
    df = pd.DataFrame(rows).sort_values("created")
    df["records"] = df.groupby(ROW + ["dataset"])["record"].transform("count")
    for _, row in df[df.records > 1].drop_duplicates(ROW + ["dataset"], keep="last").iterrows():
        log.warning("%s / %s / %s / %s has %d records (other grids or settings); the table shows the newest, %s",
                    row.label, row.method, row.protocol, row.dataset, row.records, row.record)
    df = df.drop_duplicates(ROW + ["dataset"], keep="last")
    linear = df[df.method == "linear"].set_index(["backbone", "protocol", "dataset"])["mean"]
    key = pd.MultiIndex.from_frame(df[["backbone", "protocol", "dataset"]])
    df["delta_vs_linear"] = (df["mean"].to_numpy() - linear.reindex(key).to_numpy()).round(4)
    return df.reset_index(drop=True)


def cell(row, best: bool) -> str:
    text = f"{row['mean']:.2f}" + (f" ± {row['std']:.2f}" if row["seeds"] > 1 else "")
    text = (f"**{text}**" if best else text) + ("†" if row["edge"] else "")
    if row["method"] != "linear" and pd.notna(row["delta_vs_linear"]):
        text += f" ({row['delta_vs_linear']:+.2f})"
    return text


def markdown(df: pd.DataFrame) -> str:
    datasets = [d for d in ORDER if d in set(df.dataset)] + sorted(set(df.dataset) - set(ORDER))
    best = df.groupby("dataset")["mean"].transform("max") == df["mean"]
    wide, labels = {}, dict(zip(df.backbone, df.label))
    for i, row in df.iterrows():
        wide.setdefault(tuple(row[ROW]), {})[row["dataset"]] = cell(row, best[i])
    means = df.groupby(ROW)["mean"].agg(["mean", "count"])
    lines = []
    for key, cells in sorted(wide.items()):
        avg, count = means.loc[key]
        average = f"{avg:.2f}" + ("" if count == len(datasets) else f" ({int(count)}/{len(datasets)})")
        shown = dict(zip(ROW, key)) | {"backbone": labels[key[0]]}
        lines.append(shown | {d: cells.get(d, "–") for d in datasets} | {"average": average})
    metrics = df.groupby("dataset")["metric"].first()
    note = ", ".join(f"{d}: {metrics[d]}" for d in datasets)
    return (pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True)
            + f"\n\nTest split, mean ± std over seeds, (Δ vs linear probe); † the val split chose a value on"
            f" the edge of its grid. Metric per dataset: {note}.")


def build(results_dir: Path, out_dir: Path) -> str:
    temps.check_writable(out_dir, "table folder")  # before the work, however small
    records = results.load_all(results_dir)
    if not records:
        raise UserError(f"no run records under {Path(results_dir) / 'runs'}: run `seabench run ...` first")
    df = frame(records)
    text = markdown(df)
    for name, content in [("table.md", text + "\n"), ("table.csv", df.to_csv(index=False))]:
        results.write_text(out_dir / name, content, "table")
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seabench table", description="Build the comparison table.")
    parser.add_argument("--results-dir", type=Path, default=Path("results"), help="where the records are")
    parser.add_argument("--out-dir", type=Path, default=None, help="where table.md/.csv go (default: results dir)")
    args = parser.parse_args(argv)
    print(build(args.results_dir, args.out_dir or args.results_dir))
    return 0
