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
from bench.report import compare, latex, notes, plots, reference, stats

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


def deltas(df: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Δ vs the exact baseline partner and that partner's record, for every row that is not a baseline,
    and, for a row that has none, why (None elsewhere)."""
    delta = pd.Series(float("nan"), index=df.index)
    partners, why = pd.Series(None, index=df.index, dtype=object), pd.Series(None, index=df.index, dtype=object)
    for i, row in df[~df.method.isin(compare.BASELINES)].iterrows():
        j, reason = partner(df, row)
        if j is None:
            why[i] = reason
        else:
            delta[i], partners[i] = round(row["mean"] - df.at[j, "mean"], 4), df.at[j, "record"]
    return delta, partners, why


def frame(records: list[dict], metric: str | None = None) -> pd.DataFrame:
    """One row per (backbone identity, method, protocol, dataset): the newest record's numbers (in each
    dataset's metric, or in `metric`), with its Δ against its exact linear partner (`deltas`) and, where
    there is none, why (`no_partner`)."""
    rows = [{"backbone": r["backbone"], **identity(r), "method": r["method"],
             "protocol": r["protocol"], "dataset": r["dataset"], "metric": metric or r["metric"],
             "mean": pd.Series(compare.scores(r, metric)).mean(),
             "std": pd.Series(compare.scores(r, metric)).std() if len(r["test"]["score"]) > 1 else None,
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
    df["delta_vs_linear"], df["partner"], df["no_partner"] = deltas(df)
    return df


def cell(row, best: bool) -> str:
    half = row.get("ci_half", float("nan"))
    text = f"{row['mean']:.2f}" + (f" ± {half:.2f}" if pd.notna(half) else "")  # none for one seed
    text = (f"**{text}**" if best else text) + ("†" if row["edge"] else "") + ("‡" if row["max_iter_hit"] else "")
    if pd.notna(row.get("paired_delta", float("nan"))):  # paired by identity (bench.report.compare)
        text += f" ({row['paired_delta']:+.2f}{'*' if row['significant'] is True else ''})"
    return text


def columns(df: pd.DataFrame, extra=()) -> list[str]:
    present = set(df.dataset) | set(extra)
    return [d for d in ORDER if d in present] + sorted(present - set(ORDER))


def order(df: pd.DataFrame) -> list[tuple]:
    """The table's row keys: by backbone label, the probe first within a backbone, then the methods."""
    labels = dict(zip(df.row, df.label))
    rank = {m: k for k, m in enumerate(compare.BASELINES)}
    keys = {tuple(k) for k in df[ROW].itertuples(index=False)}
    return sorted(keys, key=lambda k: (labels[k[0]], rank.get(k[1], len(rank)), k[1], k[2]))


def average(values: pd.Series, total: int) -> str:
    """The mean over the row's datasets, marked (k/n) when the row lacks some of the table's columns."""
    return f"{values.mean():.2f}" + ("" if len(values) == total else f" ({len(values)}/{total})")


def markdown(df: pd.DataFrame, published: pd.DataFrame | None = None, tests: pd.DataFrame | None = None,
             datasets: list[str] | None = None) -> str:
    datasets = datasets or columns(df)
    best = df.groupby("dataset")["mean"].transform("max") == df["mean"]
    labels = dict(zip(df.row, df.label))
    costs = notes.costs(df, ROW) if "fit_s" in df and "extract_s" in df else {}
    published = published if published is not None else pd.DataFrame(columns=["row"])
    lines, placed = [], set()
    keys = order(df)
    for n, key in enumerate(keys):
        group = df[(df.row == key[0]) & (df.method == key[1]) & (df.protocol == key[2])]
        cells = {row["dataset"]: cell(row, best[i]) for i, row in group.iterrows()}
        lines.append({"backbone": labels[key[0]], "method": key[1], "protocol": key[2]}
                     | {d: cells.get(d, "–") for d in datasets} | {"average": average(group["mean"], len(datasets))}
                     | ({"cost s": costs.get(key, "–")} if costs else {}))
        if n + 1 == len(keys) or keys[n + 1][0] != key[0]:  # the backbone's published rows right after it
            lines += notes.published_lines(published[published.row == key[0]], datasets)
            placed.add(key[0])
    lines += notes.published_lines(published[~published.row.isin(placed)], datasets)  # no runs of ours
    metrics = df.groupby("dataset")["metric"].first()
    note = ", ".join(f"{d}: {metrics.get(d, 'as published')}" for d in datasets)
    return (pd.DataFrame(lines).fillna("").to_markdown(index=False, disable_numparse=True)
            + f"\n\nTest split. Metric per dataset: {note}.\n" + notes.legend(df, published, tests)
            + notes.against_probe(tests) + partner_notes(df))


def partner_notes(df: pd.DataFrame) -> str:
    lines = [f"{r.label} / {r.method} / {r.protocol} / {r.dataset}: {r.no_partner}"
             for r in df.itertuples() if isinstance(r.no_partner, str)]
    if not lines:
        return ""
    return "\n\nNo Δ where no linear probe record is an exact partner:\n" + "".join(f"\n- {n}" for n in lines)


REFERENCE = Path(__file__).resolve().parents[2] / "results" / "reference"  # the committed published numbers
ZOO = Path(__file__).resolve().parents[2] / "conf" / "backbone"  # the backbones' `published:` blocks and labels


def check_names(records: list[dict], **wanted: list[str] | None) -> None:
    """One sentence for a backbone / method / dataset name no record has."""
    for field, names in wanted.items():
        if names:
            known = sorted({r[field] for r in records})
            if unknown := sorted(set(names) - set(known)):
                raise UserError(f"no record has {field} {', '.join(unknown)}; the records have: {', '.join(known)}")


def keep(df: pd.DataFrame, **wanted: list[str] | None) -> pd.DataFrame:
    """The rows whose backbone / method / dataset is among the wanted ones (None: any): a filter applied
    after pairing and costing, so it changes what is shown, never a shown number."""
    for field, names in wanted.items():
        if names:
            df = df[df[field].isin(names)]
    return df.reset_index(drop=True)


def csv(df: pd.DataFrame, published: pd.DataFrame) -> str:
    """The long table: one line per cell. chosen / edge as JSON; std, significant and p empty where there
    is none (one seed; untested); p below the bootstrap's resolution as `< 2/B`; a published row's
    citation in its own column."""
    out = df.assign(chosen=[json.dumps(c, sort_keys=True) for c in df["chosen"]],
                    edge=[json.dumps(e, sort_keys=True) for e in df["edge"]],
                    paired_p=[stats.p_text(p) for p in df["paired_p"]],
                    significant=[None if s is None else bool(s) for s in df["significant"]])
    out = out.drop(columns=["tested"])
    return (pd.concat([out, published], ignore_index=True) if len(published) else out).to_csv(index=False)


def build(results_dir: Path, out_dir: Path, *, backbone: list[str] | None = None, method: list[str] | None = None,
          dataset: list[str] | None = None, reference_dir: Path = REFERENCE, all_published: bool = False,
          figures: bool = True, metric: str | None = None, zoo_dir: Path = ZOO) -> str:
    """Every record is paired, tested and costed first; the filters then choose the rows shown."""
    every = results.load_all(results_dir)  # damaged records are named and skipped there
    if not every:  # before any folder is made: a mistyped --results-dir leaves nothing behind
        raise UserError(f"no run records under {Path(results_dir) / 'runs'}: run `seabench run ...` first")
    temps.check_writable(out_dir, "table folder")  # before the work, however small
    check_names(every, backbone=backbone, method=method, dataset=dataset)
    by_path = {r["path"]: r for r in every}
    full = compare.cost(compare.paired(frame(every, metric), by_path, metric), by_path)
    df = keep(full, backbone=backbone, method=method, dataset=dataset)
    ref = reference.load(reference_dir, reference.zoo(zoo_dir))
    extra = sorted(set(ref.dataset)) if all_published else []
    datasets = columns(df, [d for d in extra if not dataset or d in dataset])
    published = reference.rows(ref, df, full, by_path, datasets=datasets, everything=all_published,
                               metric=metric)
    if all_published and published.empty:
        log.warning("--all-published: the reference files have no row on the datasets shown (%s)", ", ".join(datasets))
    tests = compare.wilcoxon(df)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(df, published, tests, datasets)
    for name, content in [("table.md", text + "\n"), ("table.csv", csv(df, published)),
                          ("table.tex", latex.render(df, published, datasets, tests, notes.costs(df, ROW)))]:
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
                            help=f"only these {field}s (config names; repeat or comma-separate); rows are "
                                 "paired and costed on every record first")
    parser.add_argument("--metric", choices=["top1"], default=None,
                        help="top-1 on every dataset (as SeA's code reports); default: each dataset's own metric")
    parser.add_argument("--reference-dir", type=Path, default=REFERENCE, help="published numbers (*.csv)")
    parser.add_argument("--all-published", action="store_true",
                        help="show every published row (and its datasets), also those of backbones without runs")
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNG figures")
    args = parser.parse_args(argv)
    print(build(args.results_dir, args.out_dir or args.results_dir, backbone=args.backbone, method=args.method,
                dataset=args.dataset, reference_dir=args.reference_dir, all_published=args.all_published,
                figures=args.figures, metric=args.metric))
    return 0
