"""The table's figures (matplotlib, PNG), written atomically beside the table:

- delta.png: per dataset, each method's difference to the linear probe of the same weights, splits and
  protocol, with the 95% paired-bootstrap interval;
- cost_gain.png: one point per (backbone, method, protocol): total cost in seconds vs mean Δ over datasets;
- val_curves.png: each method's validation curve over its grid (one line per backbone x dataset).
"""

from __future__ import annotations

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
        ax.errorbar(x, group["paired_delta"], yerr=err, fmt="o", capsize=3, label=f"{label} / {method} ({protocol})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(datasets)), datasets, rotation=30 if len(datasets) > 4 else 0)
    ax.set_ylabel("Δ vs linear probe (points)")
    ax.set_title("Difference to the linear probe, 95% paired-bootstrap interval")
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    save(fig, path)


def cost_gain(df: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    rows = df.assign(total=df["fit_s"] + df["extract_s"]).groupby(["label", "method", "protocol"])
    for (label, method, protocol), group in rows:
        gain = group["paired_delta"].mean() if group["paired_delta"].notna().any() else 0.0  # the probe: 0
        ax.scatter(group["total"].sum(), gain, label=f"{label} / {method} ({protocol})")
    ax.set_xscale("log")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("cost: seconds over the datasets (fit + amortised extraction)")
    ax.set_ylabel("mean Δ vs linear probe (points)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    save(fig, path)


def axis(points: list[dict]) -> tuple[list, str, bool]:
    """The x values of a grid: the one swept numeric key when there is one (log scale over a wide range),
    else the grid point's number."""
    varying = [k for k in points[0] if len({str(p[k]) for p in points}) > 1]
    if len(varying) == 1 and all(isinstance(p[varying[0]], (int, float)) for p in points):
        values = [p[varying[0]] for p in points]
        return values, varying[0], min(values) > 0 and max(values) / min(values) > 100
    return list(range(len(points))), "grid point (" + " x ".join(varying) + ")", False


def val_curves(df: pd.DataFrame, records: dict[str, dict], path: Path) -> None:
    plt = pyplot()
    methods = sorted(set(df["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3), squeeze=False, layout="constrained")
    for ax, method in zip(axes[0], methods):
        for _, row in df[df.method == method].iterrows():
            curve = records[row["record"]].get("curve") or []
            if not curve:
                continue
            x, name, log = axis([c["point"] for c in curve])
            ax.plot(x, [c["val"] for c in curve], marker=".", label=f"{row['label']} / {row['dataset']}")
            ax.set_xlabel(name)
            if log:
                ax.set_xscale("log")
        ax.set_title(method)
        ax.set_ylabel("val score")
        if 0 < len(ax.lines) <= 12:  # beyond a dozen lines a legend hides the plot
            ax.legend(fontsize=6, loc="best")
    save(fig, path)


def write_all(df: pd.DataFrame, records: dict[str, dict], datasets: list[str], out_dir: Path) -> list[Path]:
    paths = [out_dir / name for name in ("delta.png", "cost_gain.png", "val_curves.png")]
    delta(df, datasets, paths[0])
    cost_gain(df, paths[1])
    val_curves(df, records, paths[2])
    return paths
