"""The Markdown table's extra rows and the text under it: published rows, cost cells, tests and thresholds."""

from __future__ import annotations

import pandas as pd

from bench.report import stats


def published_lines(published: pd.DataFrame, datasets: list[str]) -> list[dict]:
    """One Markdown row per published checkpoint: its numbers, with [ours − published] where we have ours."""
    lines = []
    for (label, short), group in published.groupby(["label", "protocol"], sort=False):
        cells = {}
        for _, row in group.iterrows():
            text = f"{row['published']:.2f}"
            if pd.notna(row["ours_minus_published"]):
                text += f" [ours {row['ours_minus_published']:+.2f}]"
            cells[row["dataset"]] = text
        count = group["dataset"].nunique()
        average = f"{group['published'].mean():.2f}" + ("" if count == len(datasets) else f" ({count}/{len(datasets)})")
        lines.append({"backbone": label, "method": "published", "protocol": short}
                     | {d: cells.get(d, "–") for d in datasets} | {"average": average})
    return lines


def costs(df: pd.DataFrame, row_keys: list[str]) -> dict[tuple, str]:
    """Per table row: total seconds (fit + amortised extraction) over its datasets, and the fit part."""
    totals = df.groupby(row_keys)[["fit_s", "extract_s"]].sum(min_count=1)
    return {key: f"{t.fit_s + t.extract_s:.1f} (fit {t.fit_s:.1f})" for key, t in totals.iterrows()
            if pd.notna(t.fit_s)}


def legend(df: pd.DataFrame, published: pd.DataFrame | None, tests: pd.DataFrame | None) -> str:
    level = int(100 * (1 - stats.ALPHA))
    lines = [(f"Cells: mean ± half-width of the {level}% Student-t interval of the mean over seeds (no interval"
             " for one seed); † the val split chose a value on the edge of its grid; ‡ a fit behind the number"
             " stopped at its iteration limit or diverged (the record's max_iter_hit)."),
             ("(Δ): vs the linear probe of the same weights, splits and protocol; * the paired bootstrap over the"
             f" same test examples ({stats.RESAMPLES:,} resamples of the examples, seed {stats.BOOTSTRAP_SEED},"
             f" each method's metric averaged over its seeds) puts the difference at two-sided p < {stats.ALPHA}.")]
    if tests is not None and len(tests):
        parts = [f"{t.label} / {t.method} / {t.protocol}: mean Δ {t.mean_delta:+.2f} over {t.n} datasets, "
                 + (f"p = {t.p:.3g}{' (significant)' if t.p < stats.ALPHA else ''}" if pd.notna(t.p) else "p n/a")
                 for t in tests.itertuples()]
        lines.append(f"Wilcoxon signed-rank test (two-sided, α = {stats.ALPHA}) of each method's per-dataset Δ: "
                     + "; ".join(parts) + ".")
    if "extract_s" in df:
        devices = ", ".join(sorted({str(d) for d in df["device"].dropna()})) or "unknown"
        lines.append("cost s: wall-clock seconds summed over the row's datasets: fit (grid, refit, test) plus"
                     " feature extraction, each cache entry's seconds shared evenly by the shown records that read"
                     f" it (devices: {devices}).")
    if published is not None and len(published):
        cites = "; ".join(f"{s} = {c}" for s, c in published.groupby("protocol")["cite"].first().items())
        lines.append("published rows: the paper's numbers, not run here; [ours ±x] = our linear probe"
                     f" (protocol=augself first) minus the published number. Sources: {cites}.")
    return "\n".join(lines)
