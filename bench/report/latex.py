"""The table as LaTeX a paper can `\\input` as is: a `table` float with its caption (the legend), booktabs
rules, the paper's dataset names (abbreviated, with their metric, spelled out in the caption), one group of
rows per backbone (its probe first, then the methods, then its published rows in grey), the best mean of a
column in bold within each backbone group and underlined over the whole table, and fitted to \\textwidth
(graphicx's \\resizebox to the smaller of its own width and \\textwidth: scaled down only when wider, never
up). Needs booktabs, xcolor and graphicx (all in TeX Live's latex-base / latex-recommended).

A cell: mean, ± half of the 95% interval over seeds (small), * where the paired bootstrap against the probe
of the same weights and splits is significant, † on the edge of the grid, ‡ an iteration limit hit. The Δ
itself is in the Markdown table and the CSV; here the probe's row is right above, so the table prints no
signed number (no hyphen stands for a minus).
"""

from __future__ import annotations

import pandas as pd

from bench.report import stats

SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
# config name -> (header, the paper's name): the 11-task transfer table's datasets, then ours
DATASETS = {"cifar10": ("C10", "CIFAR-10"), "cifar100": ("C100", "CIFAR-100"), "food101": ("Food", "Food-101"),
            "mit67": ("MIT", "MIT67"), "pets": ("Pets", "Oxford-IIIT Pets"), "flowers102": ("Flow.", "Flowers-102"),
            "caltech101": ("Calt.", "Caltech-101"), "cars": ("Cars", "Stanford Cars"),
            "aircraft": ("Airc.", "FGVC Aircraft"), "dtd": ("DTD", "DTD"), "sun397": ("SUN", "SUN397"),
            "voc2007": ("VOC", "VOC2007"), "digits": ("Digits", "scikit-learn digits")}
METRICS = {"top1": "top-1", "mean_per_class": "mean per-class accuracy", "map11": "11-point mAP"}
METHODS = {"linear": "Linear probe", "augself_linear": "Linear probe (AugSelf)", "sgd": "SGD probe", "sea": "SeA",
           "isda": "ISDA", "noise": "Feature noise", "afan": "A-FAN", "flow": "Flow aug.", "finetune": "Fine-tune"}


FIT = "\\resizebox{\\ifdim\\width>\\textwidth\\textwidth\\else\\width\\fi}{!}"  # shrink to the page, never grow


def escape(text) -> str:
    return "".join(SPECIAL.get(ch, ch) for ch in str(text))


DIGITS = 1  # a paper's precision; the Markdown table and the CSV keep two decimals and more


def ours_cell(row, bold: bool, underline: bool) -> str:
    text = f"{row['mean']:.{DIGITS}f}"
    text = f"\\textbf{{{text}}}" if bold else text
    text = f"\\underline{{{text}}}" if underline else text
    if pd.notna(row.get("ci_half", float("nan"))):
        text += f"{{\\tiny$\\pm${row['ci_half']:.{DIGITS}f}}}"
    marks = ("*" if row.get("significant") is True else "") + ("\\dagger" if row["edge"] else "") \
        + ("\\ddagger" if row["max_iter_hit"] else "")
    return text + (f"$^{{{marks}}}$" if marks else "")


def average(values: pd.Series, total: int) -> str:
    text = f"{values.mean():.{DIGITS}f}"
    return text if len(values) == total else f"{text}{{\\tiny ({len(values)}/{total})}}"


def caption(df: pd.DataFrame, published: pd.DataFrame, datasets: list[str], sources: dict[str, str]) -> str:
    metrics = df.groupby("dataset")["metric"].first()
    names = "; ".join(f"{DATASETS.get(d, (d, d))[0]} = {DATASETS.get(d, (d, d))[1]} "
                      f"({METRICS.get(metrics.get(d), metrics.get(d, 'as published'))})" for d in datasets)
    level = int(100 * (1 - stats.ALPHA))
    text = (f"Test-split scores (\\%): mean over seeds, $\\pm$ half of its {level}\\% Student-t interval (none"
            " for one seed). Bold: a column's best within a backbone; underlined: the column's best."
            f" $^*$: paired bootstrap vs.\\ the linear probe of the same weights and splits, $p<{stats.ALPHA}$;"
            " $^\\dagger$: the validation split chose the edge of its grid; $^\\ddagger$: a fit hit its iteration"
            " limit; (k/n): average over k of the n datasets. W/T/L: datasets on which a method is significantly"
            f" above / not significantly different from / below the probe. Datasets: {names}.")
    if sources:
        text += " Grey: published, not run here (" + "; ".join(f"{mark}: {escape(short)}" for short, mark in
                                                               sources.items()) + ")."
    return text


def render(df: pd.DataFrame, published: pd.DataFrame, datasets: list[str], tests: pd.DataFrame | None = None,
           costs: dict | None = None) -> str:
    """`costs` is accepted for symmetry with the Markdown table and left out: a cost column does not fit a
    page at 11 datasets (the Markdown table and the CSV have it). Each backbone is a heading row over its
    rows, so no backbone column takes width."""
    protocols = len(set(df["protocol"])) > 1
    best_all = df.groupby("dataset")["mean"].transform("max") == df["mean"]
    best_group = df.groupby(["row", "dataset"])["mean"].transform("max") == df["mean"]
    labels = dict(zip(df.row, df.label))
    rank = {m: k for k, m in enumerate(("linear", "augself_linear"))}
    keys = sorted({tuple(k) for k in df[["row", "method", "protocol"]].itertuples(index=False)},
                  key=lambda k: (labels[k[0]], rank.get(k[1], 9), k[1], k[2]))
    record = {} if tests is None else {(t.row, t.method, t.protocol): f"{t.wins}/{t.ties}/{t.losses}"
                                       for t in tests.itertuples()}
    sources = {short: f"$^{chr(ord('a') + k)}$" for k, short in enumerate(dict.fromkeys(published["protocol"]))}
    heads = ["Method", *(["Protocol"] if protocols else []),
             *(DATASETS.get(d, (escape(d),))[0] for d in datasets), "Avg.", "W/T/L"]
    width = len(heads)
    lines = ["% generated by `seabench table`; needs \\usepackage{booktabs,xcolor,graphicx}",
             "\\begin{table}[t]", "\\centering", "\\setlength{\\tabcolsep}{3pt}",
             f"\\caption{{{caption(df, published, datasets, sources)}}}", "\\label{tab:seabench}", FIT + "{%",
             "\\begin{tabular}{l" + "l" * protocols + "r" * (len(datasets) + 1) + "c}", "\\toprule",
             " & ".join(heads) + " \\\\"]
    grey = lambda text: f"\\textcolor{{gray}}{{{text}}}"

    def heading(label: str) -> list[str]:
        return ["\\midrule", f"\\multicolumn{{{width}}}{{l}}{{\\textit{{{escape(label)}}}}} \\\\"]

    def grey_rows(group: pd.DataFrame) -> list[str]:
        out = []
        for short, rows in group.groupby("protocol", sort=False):
            values = dict(zip(rows["dataset"], rows["published"]))
            out.append(" & ".join([grey(f"\\quad published{sources[short]}"), *([""] if protocols else []),
                                   *(grey(f"{values[d]:.{DIGITS}f}") if d in values else "--" for d in datasets),
                                   grey(average(rows["published"], len(datasets))), ""]) + " \\\\")
        return out

    for n, key in enumerate(keys):
        group = df[(df.row == key[0]) & (df.method == key[1]) & (df.protocol == key[2])]
        cells = {row["dataset"]: ours_cell(row, best_group[i], best_all[i]) for i, row in group.iterrows()}
        if n == 0 or keys[n - 1][0] != key[0]:
            lines += heading(labels[key[0]])
        lines.append(" & ".join([f"\\quad {escape(METHODS.get(key[1], key[1]))}", *([escape(key[2])] if protocols else []),
                                 *(cells.get(d, "--") for d in datasets), average(group["mean"], len(datasets)),
                                 record.get(key, "")]) + " \\\\")
        if n + 1 == len(keys) or keys[n + 1][0] != key[0]:
            lines += grey_rows(published[published.row == key[0]])
    for label, group in published[~published.row.isin(set(df.row))].groupby("label", sort=False):
        lines += heading(label) + grey_rows(group)
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}"]
    return "\n".join(lines) + "\n"
