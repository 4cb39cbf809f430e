"""The report: run records -> the comparison table (Markdown, CSV, LaTeX), its statistics, the published
rows it is read beside, and its figures. `seabench table` is `table.main`.

    table.py      the entry point: records -> one row per (backbone identity, method, protocol), per dataset
    compare.py    pairing with the exact linear-probe partner, intervals, the paired tests' inputs, cost
    stats.py      the statistics themselves (Student-t interval, paired bootstrap, Wilcoxon)
    reference.py  the published numbers (results/reference/*.csv) matched to our backbones by identity
    notes.py      the text under the table (legend, cost cells, published lines)
    latex.py      table.tex;  plots.py: the PNG figures

The report reads only records (through bench.results) and the committed reference files: it may import
bench.results, bench.temps and itself, never a run's modules (job, protocol, features, data, backbones,
methods, finetune), the sweep, the config or the CLI, and never torch, so a table builds from any results
folder, on any machine, without loading a model.
"""
