"""The table's figures (matplotlib, PNG), written atomically beside the table:

- delta.png: per dataset, each method's difference to the linear probe of the same weights, splits and
  protocol, with the 95% paired-bootstrap interval; a filled marker where the paired test gives p < 0.05;
- cost_gain.png: one point per (backbone, method, protocol): total cost in seconds vs mean Δ over datasets;
- val_curves.png: one panel per (method, hyperparameter): the validation score against that parameter's
  value (the best over the grid's other parameters), one line per backbone x dataset, the chosen value starred.

Series past the 10 colours of the cycle differ in marker and line style too (`style`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench import temps


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    """Write the figure atomically (bench.temps), as PNG."""
    try:
        with temps.atomic(path, "figure") as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        pyplot().close(fig)


MARKERS, LINES = "osD^v<>Pp*", ["-", "--", ":", "-."]


def style(k: int) -> dict:
    """The k-th series' look: colour, marker and line style, so no two of the first 160 series look alike."""
    return {"color": f"C{k % 10}", "marker": MARKERS[(k // 10) % len(MARKERS)],
            "linestyle": LINES[(k // 100) % len(LINES)]}


def delta(df: pd.DataFrame, datasets: list[str], path: Path) -> None:
    plt = pyplot()
    rows = df.dropna(subset=["paired_delta"])
    series = list(rows.groupby(["label", "method", "protocol"]))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(datasets) + 2), 3.2))
    width = 0.8 / max(1, len(series))
    for k, ((label, method, protocol), group) in enumerate(series):
        x = np.array([datasets.index(d) for d in group["dataset"]]) - 0.4 + width * (k + 0.5)
        err = [(group["paired_delta"] - group["paired_lo"]).fillna(0),  # no bar: the records kept no predictions
               (group["paired_hi"] - group["paired_delta"]).fillna(0)]
        look = style(k)
        ax.errorbar(x, group["paired_delta"], yerr=err, fmt=look["marker"], color=look["color"], capsize=3,
                    mfc="white", label=f"{label} / {method} ({protocol})")
        sig = (group["significant"] == True).to_numpy()
        ax.plot(x[sig], group["paired_delta"].to_numpy()[sig], look["marker"], color=look["color"], ls="none",
                zorder=3)  # filled, over the hollow marker
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(datasets)), datasets, rotation=30 if len(datasets) > 4 else 0)
    ax.set_ylabel("Δ vs linear probe (points)")
    ax.set_title("Difference to the linear probe, 95% paired-bootstrap interval\n"
                 "filled: paired bootstrap p < 0.05; hollow: not significant or untested", fontsize=9)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    save(fig, path)


def cost_gain(df: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    rows = df.assign(total=df["fit_s"] + df["extract_s"]).groupby(["label", "method", "protocol"])
    for k, ((label, method, protocol), group) in enumerate(rows):
        gain = group["paired_delta"].mean() if group["paired_delta"].notna().any() else 0.0  # the probe: 0
        look = style(k)
        ax.scatter(group["total"].sum(), gain, color=look["color"], marker=look["marker"],
                   label=f"{label} / {method} ({protocol})")
    ax.set_title("Cost and gain over the linear probe, per row of the table", fontsize=9)
    ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("cost: seconds over the datasets (fit + amortised extraction)")
    ax.set_ylabel("mean Δ vs linear probe (points)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    save(fig, path)


def profiles(curve: list[dict]) -> dict[str, list[tuple]]:
    """Per swept hyperparameter: [(value, best val score over the grid's other parameters)], in value order."""
    points = [c["point"] for c in curve]
    out = {}
    for key in points[0]:
        values = {json.dumps(p[key], sort_keys=True): p[key] for p in points}
        if len(values) < 2:
            continue
        best = {}
        for c in curve:
            if c["val"] is None:  # not fitted (the sweep ended early: `early_end`)
                continue
            v = json.dumps(c["point"][key], sort_keys=True)
            best[v] = max(best.get(v, float("-inf")), c["val"])
        out[key] = sorted(((values[v], b) for v, b in best.items()), key=lambda t: (str(type(t[0])), t[0]))
    return out


def val_curves(df: pd.DataFrame, records: dict[str, dict], path: Path) -> None:
    plt = pyplot()
    panels: dict[tuple, list] = {}
    for _, row in df.sort_values(["method", "label", "dataset"]).iterrows():
        record = records[row["record"]]
        for key, prof in profiles(record.get("curve") or []).items() if record.get("curve") else ():
            panels.setdefault((row["method"], key), []).append((f"{row['label']} / {row['dataset']}", prof,
                                                                (record.get("chosen") or {}).get(key), row["metric"]))
    if not panels:
        panels[("no grid", "")] = []
    cols = min(4, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3 * rows_n), squeeze=False, layout="constrained")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, ((method, key), lines) in zip(axes.ravel(), panels.items()):
        for k, (name, prof, chosen, metric) in enumerate(lines):
            look = style(k)
            xs, ys = [v for v, _ in prof], [b for _, b in prof]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
            x = xs if numeric else list(range(len(xs)))
            ax.plot(x, ys, label=name, **look)
            if chosen is not None and chosen in xs:
                at = xs.index(chosen)
                ax.plot(x[at], ys[at], "*", color=look["color"], ms=14, mec="black", ls="none")
            if numeric and min(xs) > 0 and max(xs) / min(xs) > 100:
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(x, [str(v) for v in xs], fontsize=7)
            ax.set_ylabel(f"val {metric} (best over the other parameters)", fontsize=8)
        ax.set_xlabel(key)
        ax.set_title(f"{method}: {key} (★ chosen)", fontsize=9)
        if 0 < len(ax.lines) and len(lines) <= 12:  # beyond a dozen lines a legend hides the plot
            ax.legend(fontsize=6, loc="best")
    save(fig, path)


def write_all(df: pd.DataFrame, records: dict[str, dict], datasets: list[str], out_dir: Path) -> list[Path]:
    paths = [out_dir / name for name in ("delta.png", "cost_gain.png", "val_curves.png")]
    delta(df, datasets, paths[0])
    cost_gain(df, paths[1])
    val_curves(df, records, paths[2])
    return paths
