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
    """Per table row: total seconds (fit + shared extraction) over its datasets, and the fit part."""
    totals = df.groupby(row_keys)[["fit_s", "extract_s"]].sum(min_count=1)
    return {key: f"{t.fit_s + t.extract_s:.1f} (fit {t.fit_s:.1f})" for key, t in totals.iterrows()
            if pd.notna(t.fit_s)}


def wilcoxon_text(t) -> str:
    """One test's result, with its floor: the smallest p its number of non-zero differences allows."""
    if t.p is None or pd.isna(t.p):
        return f"n = {t.n}, p n/a (every Δ is 0)"
    text = f"n = {t.n}" + (f" ({t.n - t.nonzero} zero dropped)" if t.nonzero < t.n else "") + f", p = {t.p:.3g}"
    if t.min_p >= stats.ALPHA:
        text += f" (cannot reach p < {stats.ALPHA}: its floor is {t.min_p:.3g})"
    return text


def against_probe(tests: pd.DataFrame | None) -> str:
    """Per method with a probe partner: wins / ties / losses over datasets (a tie: not significant), and the
    Wilcoxon signed-rank test over its per-dataset Δ, as a small table."""
    if tests is None or not len(tests):
        return ""
    lines = [{"backbone": t.label, "method": t.method, "protocol": t.protocol,
              "wins / ties / losses": f"{t.wins} / {t.ties} / {t.losses}" + (f" ({t.untested} untested)" if t.untested else ""),
              "mean Δ": f"{t.mean_delta:+.2f}", "Wilcoxon": wilcoxon_text(t)} for t in tests.itertuples()]
    return ("\n\nAgainst the linear probe, over the datasets shown (win / loss: the paired bootstrap puts Δ above"
            f" / below 0 at p < {stats.ALPHA}; tie: it does not; untested: no kept predictions):\n\n"
            + pd.DataFrame(lines).to_markdown(index=False, disable_numparse=True))


def legend(df: pd.DataFrame, published: pd.DataFrame | None, tests: pd.DataFrame | None) -> str:
    level = int(100 * (1 - stats.ALPHA))
    lines = [(f"Cells: mean ± half-width of the {level}% Student-t interval of the mean over seeds (no interval"
             " for one seed); † the val split chose a value on the edge of its grid; ‡ a fit behind the number"
             " stopped at its iteration limit or diverged (the record's max_iter_hit); (k/n) an average over the"
             " k datasets a row has of the n shown."),
             ("(Δ): vs the linear probe of the same weights, splits and protocol; * the paired bootstrap over the"
             f" same test examples ({stats.RESAMPLES:,} resamples of the examples, seed {stats.BOOTSTRAP_SEED},"
             f" each method's metric averaged over its seeds; ties counted exactly, on both sides) puts the"
             f" difference at two-sided p < {stats.ALPHA}.")]
    if tests is not None and len(tests):
        floor = min(n for n in range(1, 64) if 2.0 ** (1 - n) < stats.ALPHA)
        lines.append(f"Wilcoxon signed-rank test (two-sided, α = {stats.ALPHA}, scipy's exact test, zero_method="
                     f"'{stats.ZERO_METHOD}': a zero Δ is dropped) of each method's per-dataset Δ: it cannot reach"
                     f" p < {stats.ALPHA} with fewer than {floor} non-zero differences (its smallest p is 2/2^n).")
    if "extract_s" in df:
        devices = ", ".join(sorted({str(d) for d in df["device"].dropna()})) or "unknown"
        lines.append("cost s: wall-clock seconds summed over the row's datasets: fit (grid, refit, test) plus"
                     " feature extraction, each feature-cache entry's (and fitted flow's) seconds as stored when it"
                     " was made, shared evenly by every record of the results folder that used it, whatever the"
                     f" filter (devices: {devices}).")
    if "machine" in df:
        machines = ", ".join(sorted({str(m) for m in df["machine"].dropna()})) or "not recorded (older records)"
        lines.append(f"Numerics (what makes a row differ between machines): {machines}.")
    if published is not None and len(published):
        cites = "; ".join(f"{s} = {c}" for s, c in
                          published.groupby("protocol")["citation"].agg(lambda c: " / ".join(dict.fromkeys(c))).items())
        lines.append("published rows: the paper's numbers, not run here; [ours ±x] = our linear probe of the"
                     " checkpoint the row names (protocol=augself first) minus the published number. Sources: "
                     f"{cites}.")
    return "\n".join(lines)
