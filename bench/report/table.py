"""Records -> the comparison table: rows (backbone, method), columns the datasets + their average.

A cell is the mean of the dataset's metric over seeds (test split) ± half of its 95% interval, with the
difference to the linear probe of the same weights, data, protocol version and precision (its exact
partner; where there is none, no difference, and a note under the table says why) in parentheses, starred
where the paired test says it is real (bench.report.compare, bench.report.stats); the best mean of each column is in
bold. Rows are backbone identities (weights' hash, preprocessing, overrides), never display names. When a
cell has several records (e.g. a narrowed grid, then the full one), the newest is used and the CSV names
the record each number comes from. Published rows (bench.report.reference), a cost column, LaTeX (bench.report.latex)
and figures (bench.report.plots) come with it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from bench import UserError, digest, results, temps
from bench.report import compare, latex, notes, plots, reference

log = logging.getLogger(__name__)

# column order of the 11-task transfer table (Kornblith et al. 2019; AugSelf); other datasets follow
ORDER = ["cifar10", "cifar100", "food101", "mit67", "pets", "flowers102", "caltech101", "cars", "aircraft",
         "dtd", "sun397"]
ROW = ["row", "method", "protocol"]  # `row`: the backbone's identity (short hash), never its display name
# a method is compared with the linear probe whose record agrees on all of these (its exact partner)
PAIR = ["weights", "preprocess", "data", "protocol_version", "precision"]


def short_hash(value) -> str:
    return digest(value)[:12]


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


def partner(df: pd.DataFrame, row) -> tuple[int | None, str]:
    """(the index of the row's exact baseline partner, "") or (None, why there is none), for a row that is
    not itself a baseline: the probe (`compare.BASELINES`, in order) of the same backbone identity,
    protocol and dataset whose record agrees on every `PAIR` fact."""
    same_cell = (df.protocol == row["protocol"]) & (df.dataset == row["dataset"])
    for method in compare.BASELINES:
        mine = df[same_cell & (df.method == method) & (df.row == row["row"])]
        if mine.empty:
            continue
        differ = [k for k in PAIR if not same(mine.iloc[0][k], row[k])]
        if differ:
            return None, f"its {method} probe's record differs in {', '.join(differ)}"
        return mine.index[0], ""
    if (same_cell & df.method.isin(compare.BASELINES) & (df.backbone == row["backbone"])).any():
        return None, (f"the linear probe of backbone {row['backbone']!r} ran with other weights, "
                      f"preprocessing or data (another row)")
    return None, "no linear probe record of this backbone, dataset and protocol"


def deltas(df: pd.DataFrame) -> tuple[pd.Series, pd.Series, list[str]]:
    """Δ vs the exact baseline partner and that partner's record, for every row that is not a baseline,
    and one note per row that has none."""
    delta, partners, notes = pd.Series(float("nan"), index=df.index), pd.Series(None, index=df.index, dtype=object), []
    for i, row in df[~df.method.isin(compare.BASELINES)].iterrows():
        j, why = partner(df, row)
        if j is None:
            notes.append(f"{row['label']} / {row['method']} / {row['protocol']} / {row['dataset']}: {why}")
        else:
            delta[i], partners[i] = round(row["mean"] - df.at[j, "mean"], 4), df.at[j, "record"]
    return delta, partners, notes


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
    df["delta_vs_linear"], df["partner"], notes = deltas(df)
    df.attrs["notes"] = notes
    return df


def cell(row, best: bool) -> str:
    half = (row["ci_hi"] - row["ci_lo"]) / 2 if pd.notna(row.get("ci_hi", float("nan"))) else None
    text = f"{row['mean']:.2f}" + (f" ± {half:.2f}" if half is not None else "")  # none for one seed
    text = (f"**{text}**" if best else text) + ("†" if row["edge"] else "") + ("‡" if row["max_iter_hit"] else "")
    if "paired_delta" in row:  # paired by identity (bench.report.compare)
        if pd.notna(row["paired_delta"]):
            text += f" ({row['paired_delta']:+.2f}{'*' if row['significant'] else ''})"
    elif row["method"] != "linear" and pd.notna(row["delta_vs_linear"]):
        text += f" ({row['delta_vs_linear']:+.2f})"
    return text


def columns(df: pd.DataFrame) -> list[str]:
    return [d for d in ORDER if d in set(df.dataset)] + sorted(set(df.dataset) - set(ORDER))


def markdown(df: pd.DataFrame, published: pd.DataFrame | None = None, tests: pd.DataFrame | None = None) -> str:
    datasets = columns(df)
    best = df.groupby("dataset")["mean"].transform("max") == df["mean"]
    wide, labels = {}, dict(zip(df.row, df.label))
    for i, row in df.iterrows():
        wide.setdefault(tuple(row[ROW]), {})[row["dataset"]] = cell(row, best[i])
    means = df.groupby(ROW)["mean"].agg(["mean", "count"])
    costs = notes.costs(df, ROW) if "fit_s" in df and "extract_s" in df else {}
    lines = []
    for key, cells in sorted(wide.items(), key=lambda item: (labels[item[0][0]], *item[0][1:])):
        avg, count = means.loc[key]
        average = f"{avg:.2f}" + ("" if count == len(datasets) else f" ({int(count)}/{len(datasets)})")
        shown = {"backbone": labels[key[0]], "method": key[1], "protocol": key[2]}
        lines.append(shown | {d: cells.get(d, "–") for d in datasets} | {"average": average}
                     | ({"cost s": costs.get(key, "–")} if costs else {}))
    lines += notes.published_lines(published, datasets) if published is not None else []
    metrics = df.groupby("dataset")["metric"].first()
    note = ", ".join(f"{d}: {metrics[d]}" for d in datasets)
    return (pd.DataFrame(lines).fillna("").to_markdown(index=False, disable_numparse=True)
            + f"\n\nTest split. Metric per dataset: {note}.\n" + notes.legend(df, published, tests)
            + partner_notes(df.attrs.get("notes", [])))


def partner_notes(lines: list[str]) -> str:
    if not lines:
        return ""
    return "\n\nNo Δ where no linear probe record is an exact partner:\n" + "".join(f"\n- {n}" for n in lines)


REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference"  # the committed published numbers


def narrow(records: list[dict], **wanted: list[str] | None) -> list[dict]:
    """The records whose backbone / method / dataset is among the wanted ones (None: any); one sentence for
    a name no record has."""
    for field, names in wanted.items():
        if names:
            known = sorted({r[field] for r in records})
            if unknown := sorted(set(names) - set(known)):
                raise UserError(f"no record has {field} {', '.join(unknown)}; the records have: {', '.join(known)}")
            records = [r for r in records if r[field] in names]
    return records


def build(results_dir: Path, out_dir: Path, *, backbone: list[str] | None = None, method: list[str] | None = None,
          dataset: list[str] | None = None, reference_dir: Path = REFERENCE, all_published: bool = False,
          figures: bool = True) -> str:
    every = results.load_all(results_dir)  # damaged records are named and skipped there
    if not every:  # before any folder is made: a mistyped --results-dir leaves nothing behind
        raise UserError(f"no run records under {Path(results_dir) / 'runs'}: run `seabench run ...` first")
    temps.check_writable(out_dir, "table folder")  # before the work, however small
    chosen = narrow(every, backbone=backbone, method=method, dataset=dataset)
    by_path = {r["path"]: r for r in chosen}
    df = compare.cost(compare.paired(frame(chosen), by_path), by_path, every)
    datasets = columns(df)
    published = reference.rows(reference.load(reference_dir), df, by_path, datasets=datasets,
                               everything=all_published)
    tests = compare.wilcoxon(df)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(df, published, tests)
    long = pd.concat([df, published], ignore_index=True) if len(published) else df
    for name, content in [("table.md", text + "\n"), ("table.csv", long.to_csv(index=False)),
                          ("table.tex", latex.render(df, published, datasets, ROW, notes.costs(df, ROW)))]:
        results.write_text(out_dir / name, content, "table")
    if figures:
        plots.write_all(df, by_path, datasets, out_dir)
    return text


def names(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seabench table", description="Build the comparison table.")
    parser.add_argument("--results-dir", type=Path, default=Path("results"), help="where the records are")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where table.md/.csv/.tex and the PNG figures go (default: results dir)")
    for field in ("backbone", "method", "dataset"):
        parser.add_argument(f"--{field}", type=names, action="extend", default=None,
                            help=f"only these {field}s (config names; repeat or comma-separate)")
    parser.add_argument("--reference-dir", type=Path, default=REFERENCE, help="published numbers (*.csv)")
    parser.add_argument("--all-published", action="store_true",
                        help="show every published row, also those of backbones without runs")
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNG figures")
    args = parser.parse_args(argv)
    print(build(args.results_dir, args.out_dir or args.results_dir, backbone=args.backbone, method=args.method,
                dataset=args.dataset, reference_dir=args.reference_dir, all_published=args.all_published,
                figures=args.figures))
    return 0
