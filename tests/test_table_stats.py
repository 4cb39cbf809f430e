"""`seabench table` on hand-made records: published rows matched, intervals and paired tests against scipy and
brute force, cost summed right, LaTeX well formed, filters."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from bench import UserError, results
from bench.metrics import mean_per_class, top1
from bench.report import compare, plots, stats, table

PUBLISHED = {"source": "augself_neurips2021_linear", "arch": "resnet50", "pretrain_data": "imagenet100",
             "pretrain_method": "mocov2"}
N, CLASSES = 400, 4


def labels() -> np.ndarray:
    return np.arange(N) % CLASSES


def predictions(accuracy: float, seed: int) -> np.ndarray:
    """Predictions right on about `accuracy` of the examples (which ones depends on the seed)."""
    rng = np.random.default_rng(seed)
    y = labels()
    return np.where(rng.random(N) < accuracy, y, (y + 1) % CLASSES)


def record(root: Path, *, backbone="augself_in100_mocov2", method="linear", dataset="cifar10", seeds=(0,),
           accuracy=0.85, fit=2.0, hit=True, extract=(4.0, 2.0), weights="w1", metric="top1", published=True):
    y = labels()
    preds = [predictions(accuracy, 100 * s + zlib.crc32(method.encode()) % 97) for s in seeds]  # str hash: per process
    score = [(mean_per_class(torch.tensor(p), torch.tensor(y)) if metric == "mean_per_class"
              else 100.0 * (p == y).mean()) for p in preds]
    keys = {"train": f"{weights}-{dataset}-train", "test": f"{weights}-{dataset}-test"}
    rec = {"backbone": backbone, "backbone_label": backbone.upper(), "method": method, "protocol": "augself",
           "dataset": dataset, "metric": metric, "chosen": {}, "edge": {}, "weights_sha256": weights,
           "splits": {"train": f"tr-{dataset}", "test": f"te-{dataset}"}, "device": "cpu",
           "created": f"2026-01-01T00:00:{len(list(root.rglob('*.json'))):02d}+00:00",
           "config": {"backbone": {"name": backbone, **({"published": PUBLISHED} if published else {})}},
           "test": {"score": score, "top1": score, "predictions": [results.pack(p) for p in preds],
                    "labels": results.pack(y)},
           "features": {s: {"key": k, "hit": hit} for s, k in keys.items()},
           "timings": {"fit": fit, "features_train": extract[0], "features_test": extract[1]},
           "curve": [{"point": {"penalty": 0.1 * 10 ** k}, "val": 80.0 + k} for k in range(3)]}
    path = root / "runs" / dataset / backbone / f"{method}-{len(list(root.rglob('*.json')))}.json"
    results.write(path, rec)
    return rec


def test_pack_round_trips():
    values = np.array([0, 3, 65535, 17])
    assert np.array_equal(results.unpack(results.pack(values)), values)
    with pytest.raises(ValueError):
        results.pack([70000])


def test_interval_is_scipy_t_interval_and_one_seed_has_none():
    scores = [71.0, 72.5, 70.2, 73.1]
    lo, hi = stats.interval(scores)
    ref = sps.t.interval(0.95, len(scores) - 1, loc=np.mean(scores), scale=sps.sem(scores))
    assert (lo, hi) == pytest.approx(ref)
    assert stats.interval([71.0]) is None


def test_bootstrap_statistic_is_the_metric_on_each_resample():
    """metric_of, vectorised over resamples, equals bench.metrics on each resample taken one at a time."""
    rng = np.random.default_rng(1)
    y, pred = labels(), predictions(0.7, 3)
    idx = rng.integers(0, N, (5, N))
    for metric, fn in (("top1", top1), ("mean_per_class", mean_per_class)):
        ours = stats.metric_of((pred == y).astype(float)[idx], y[idx], metric, CLASSES)
        brute = [float(fn(torch.tensor(pred[i]), torch.tensor(y[i]))) for i in idx]
        assert ours == pytest.approx(brute)


def test_paired_bootstrap_agrees_with_scipy_bootstrap():
    y, a, b = labels(), predictions(0.85, 1), predictions(0.80, 2)
    ours = stats.paired_bootstrap(a[None], b[None], y, metric="top1")
    ref = sps.bootstrap(((a == y) * 100.0, (b == y) * 100.0), lambda u, v, axis: u.mean(axis) - v.mean(axis),
                        paired=True, vectorized=True, n_resamples=stats.RESAMPLES, confidence_level=0.95,
                        method="percentile", random_state=np.random.default_rng(7))
    assert ours["delta"] == pytest.approx(100.0 * ((a == y).mean() - (b == y).mean()))
    assert ours["lo"] == pytest.approx(ref.confidence_interval.low, abs=0.6)  # Monte Carlo error of both
    assert ours["hi"] == pytest.approx(ref.confidence_interval.high, abs=0.6)
    same = stats.paired_bootstrap(a[None], a[None], y, metric="mean_per_class")
    assert same["delta"] == 0 and same["p"] == 1.0


def test_wilcoxon_is_scipy_s_on_the_per_dataset_deltas(tmp_path):
    datasets = ["cifar10", "cifar100", "food101", "mit67", "pets", "dtd"]
    for k, d in enumerate(datasets):
        record(tmp_path, dataset=d)
        record(tmp_path, dataset=d, method="sea", seeds=(0, 1, 2), accuracy=0.86 + 0.01 * k)
    df = table.frame(results.load_all(tmp_path))
    by_path = {r["path"]: r for r in results.load_all(tmp_path)}
    df = compare.paired(df, by_path)
    tests = compare.wilcoxon(df)
    sea = df[df.method == "sea"].set_index("dataset")
    linear = df[df.method == "linear"].set_index("dataset")
    deltas = [sea.loc[d, "mean"] - linear.loc[d, "mean"] for d in sea.index]
    assert sea["paired_delta"].tolist() == pytest.approx(deltas)
    assert tests.iloc[0]["p"] == pytest.approx(sps.wilcoxon(sea["paired_delta"].tolist()).pvalue)
    assert tests.iloc[0]["n"] == 6 and (sea["baseline"] == "linear").all()


def test_pairing_is_by_identity_not_by_name(tmp_path):
    record(tmp_path, method="linear", weights="w1")
    record(tmp_path, method="sea", weights="w2", seeds=(0, 1))  # same name, other weights: no baseline
    by_path = {r["path"]: r for r in results.load_all(tmp_path)}
    df = compare.paired(table.frame(list(by_path.values())), by_path)
    assert df.loc[df.method == "sea", "paired_delta"].isna().all()


def test_records_without_predictions_get_the_difference_but_no_test(tmp_path):
    record(tmp_path, method="linear")
    old = record(tmp_path, method="sea", seeds=(0, 1), accuracy=0.5)
    path = next(p for p in (tmp_path / "runs").rglob("sea-*.json"))
    del old["test"]["predictions"]
    results.write(path, old)
    by_path = {r["path"]: r for r in results.load_all(tmp_path)}
    df = compare.paired(table.frame(list(by_path.values())), by_path).set_index("method")
    assert df.loc["sea", "paired_delta"] == pytest.approx(df.loc["sea", "mean"] - df.loc["linear", "mean"])
    assert np.isnan(df.loc["sea", "paired_p"]) and not df.loc["sea", "significant"]
    table.build(tmp_path, tmp_path / "out")  # the figures too


def test_published_rows_are_matched_and_compared(tmp_path):
    record(tmp_path, dataset="cifar10", accuracy=0.85)
    record(tmp_path, dataset="dtd", backbone="other", published=False)
    text = table.build(tmp_path, tmp_path / "out", figures=False)
    ours = json.loads(next((tmp_path / "runs" / "cifar10").rglob("*.json")).read_text())["test"]["score"][0]
    published = [line for line in text.splitlines() if "| published" in line]
    assert len(published) == 1 and "AUGSELF_IN100_MOCOV2" in published[0]
    assert f"84.60 [ours {ours - 84.60:+.2f}]" in published[0] and "AugSelf, NeurIPS 2021" in published[0]
    assert "Lee et al." in text  # the citation under the table
    everything = table.build(tmp_path, tmp_path / "out", figures=False, all_published=True)
    lines = [line for line in everything.splitlines() if "| published" in line]
    assert len(lines) == 8 + 3  # every checkpoint of the CSVs: AugSelf's 8, ssl-transfer's 3
    # labelled as the zoo labels the checkpoint (its config's `published:` block), else by the CSV's columns
    assert any(line.startswith("| DeepCluster-v2 R50") for line in lines)
    assert any(line.startswith("| resnet18 stl10 mocov2 ") for line in lines)
    assert "ssl-transfer readme.md" in (tmp_path / "out" / "table.csv").read_text()  # the row's own citation


def test_published_rows_pair_by_identity_and_all_published_shows_their_datasets(tmp_path):
    record(tmp_path, dataset="cifar10", accuracy=0.85, weights="w1")
    # the same backbone name with other weights (a later checkpoint): its probe is another row, and only
    # the row whose record names the checkpoint is held against the paper
    record(tmp_path, dataset="cifar10", accuracy=0.50, weights="w2", published=False)
    text = table.build(tmp_path, tmp_path / "out", figures=False)
    ours = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*.json")]
    mine = next(r for r in ours if r["weights_sha256"] == "w1")["test"]["score"][0]
    published = next(line for line in text.splitlines() if "| published" in line)
    assert f"[ours {mine - 84.60:+.2f}]" in published
    only_digits = tmp_path / "digits"
    record(only_digits, dataset="digits")
    everything = table.build(only_digits, only_digits / "out", figures=False, all_published=True)
    assert "cifar100" in everything.splitlines()[0]  # the published rows' datasets become columns
    assert sum("| published" in line for line in everything.splitlines()) == 8 + 3


def test_cost_shares_each_entry_by_one_rule_whatever_the_filter(tmp_path):
    record(tmp_path, method="linear", hit=False, fit=2.0, extract=(6.0, 3.0))  # extracted: 9 s
    record(tmp_path, method="sgd", hit=True, fit=5.0, extract=(0.1, 0.1))      # cache hits
    record(tmp_path, method="sea", hit=True, fit=7.0, extract=(0.1, 0.1))
    record(tmp_path, method="linear", dataset="dtd", hit=False, fit=1.0, extract=(4.0, 0.0), weights="w9")
    every = results.load_all(tmp_path)
    by_path = {r["path"]: r for r in every}
    df = compare.cost(table.frame(every), by_path).set_index(["method", "dataset"])
    assert df.loc[("sgd", "cifar10"), "extract_s"] == pytest.approx(3.0)   # 9 s over three readers
    assert df.loc[("linear", "dtd"), "extract_s"] == pytest.approx(4.0)    # its own entries only
    assert df["extract_s"].sum() == pytest.approx(13.0) and df["fit_s"].sum() == pytest.approx(15.0)
    # a filter changes what is shown, never a shown cost: sea alone still carries its third
    text = table.build(tmp_path, tmp_path / "out", figures=False, method=["sea"])
    assert "10.0 (fit 7.0)" in text
    text = table.build(tmp_path, tmp_path / "out", figures=False, method=["linear"])
    assert "5.0 (fit 2.0)" in text and "5.0 (fit 1.0)" in text  # 2 + 9/3; 1 + 4


def test_cost_uses_what_each_record_stores_extraction_and_a_cached_flow(tmp_path):
    """The record that extracted is in another results folder (a shared cache): the readers here still carry
    the entry's stored seconds; a flow loaded from the cache costs its stored fit seconds, not the load."""
    for method in ("sgd", "flow"):
        rec = record(tmp_path, method=method, hit=True, fit=3.0, extract=(0.1, 0.1))
        for entry in rec["features"].values():
            entry["extraction_seconds"] = 6.0
        if method == "flow":
            rec["timings"]["fit"] = 3.0  # of which 0.5 s loading the cached flow
            rec["method_costs"] = {"flow_fits": [{"key": "f1", "hit": True, "seconds": 0.5, "fit_seconds": 20.0}]}
        path = next(p for p in (tmp_path / "runs").rglob(f"{method}-*.json"))
        results.write(path, rec)
    every = results.load_all(tmp_path)
    df = compare.cost(table.frame(every), {r["path"]: r for r in every}).set_index("method")
    assert df.loc["sgd", "extract_s"] == pytest.approx(6.0)  # two entries of 6 s, each shared by two readers
    assert df.loc["flow", "fit_s"] == pytest.approx(3.0 - 0.5 + 20.0)


def balanced(tex: str) -> bool:
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def test_latex_is_a_float_a_paper_can_input(tmp_path):
    for d in ("cifar10", "dtd"):
        record(tmp_path, dataset=d)
        record(tmp_path, dataset=d, method="sea", seeds=(0, 1, 2), accuracy=0.9)
    record(tmp_path, dataset="cifar10", backbone="b_2%&", published=False)
    path = next(p for p in (tmp_path / "runs").rglob("sea-*.json") if "dtd" in str(p))
    rec = json.loads(path.read_text())
    rec["max_iter_hit"] = True
    results.write(path, rec)
    table.build(tmp_path, tmp_path / "out", figures=False)
    tex = (tmp_path / "out" / "table.tex").read_text()
    assert balanced(tex) and tex.count("\\toprule") == tex.count("\\bottomrule") == 1
    assert "\\begin{table}" in tex and "\\caption{" in tex and "\\label{" in tex
    assert "\\resizebox{\\ifdim\\width>\\textwidth\\textwidth\\else\\width\\fi}{!}{%" in tex
    assert "C10 = CIFAR-10 (top-1)" in tex and "DTD = DTD (top-1)" in tex  # the paper's names, the metric
    body = tex.split("\\toprule", 1)[1].split("\\bottomrule")[0]
    rows = [line for line in body.splitlines() if line.endswith("\\\\")][1:]  # after the header
    # each backbone a heading row, its probe first, then its methods, then its published row
    assert rows[0] == "\\multicolumn{5}{l}{\\textit{AUGSELF\\_IN100\\_MOCOV2}} \\\\"
    assert rows[1].startswith("\\quad Linear probe") and rows[2].startswith("\\quad SeA")
    assert rows[3].startswith("\\textcolor{gray}{\\quad published$^a$}")
    assert "B\\_2\\%\\&" in rows[4] and rows[5].startswith("\\quad Linear probe") and len(rows) == 6
    cells = [re.sub(r"\\&", "", line).count("&") + 1 for line in (rows[1], rows[2], rows[3], rows[5])]
    assert cells == [5] * 4  # method, 2 datasets, average, W/T/L
    assert re.search(r"& \d/\d/\d \\\\$", rows[2]) and rows[1].endswith("&  \\\\")  # W/T/L; none for the probe
    assert "\\ddagger" in rows[2] and "(1/2)" in rows[5]  # ‡ printed; a partial average marked
    assert "\\textbf{" in rows[2] and "\\underline{" in body and "$^a$: AugSelf, NeurIPS 2021" in tex
    assert not re.search(r"(?<![a-zA-Z$])-\\d", body)  # no hyphen for a minus


def test_latex_fits_the_text_width_at_eleven_datasets(tmp_path):
    """Compiled with pdflatex (skipped where there is none): 11 datasets + average, every method, published
    rows, no overfull box."""
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed")
    for d in table.ORDER:
        record(tmp_path, dataset=d)
        for method in ("sgd", "sea", "isda", "noise", "afan", "flow"):
            record(tmp_path, dataset=d, method=method, seeds=(0, 1, 2), accuracy=0.86)
    table.build(tmp_path, tmp_path / "out", figures=False)
    doc = tmp_path / "out" / "paper.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs,xcolor,graphicx}\\begin{document}\n"
                   "\\input{table.tex}\n\\end{document}\n")
    run = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], check=False,
                         cwd=doc.parent,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "Overfull \\hbox" not in (doc.parent / "paper.log").read_text()


def test_one_seed_shows_no_interval_and_filters_narrow(tmp_path):
    record(tmp_path, method="linear")
    record(tmp_path, method="sea", seeds=(0, 1, 2))
    text = table.build(tmp_path, tmp_path / "out", figures=False)
    linear_line = next(line for line in text.splitlines() if "| linear" in line)
    assert "±" not in linear_line.split("|")[4]
    assert "±" in next(line for line in text.splitlines() if "| sea" in line)
    only = table.build(tmp_path, tmp_path / "out", figures=False, method=["sea"])
    assert "| sea" in only and "| linear" not in only
    with pytest.raises(UserError, match="no record has dataset nope"):
        table.build(tmp_path, tmp_path / "out", figures=False, dataset=["nope"])


def test_cli_filters_and_figures(seabench, tmp_path):
    record(tmp_path, method="linear")
    record(tmp_path, method="sea", seeds=(0, 1))
    run = lambda *a: seabench("table", "--results-dir", str(tmp_path), *a, check=False)
    out = run("--method", "linear,sea", "--dataset", "cifar10")
    assert out.returncode == 0, out.stderr
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("delta.png", "cost_gain.png", "val_curves.png"))
    bad = run("--backbone", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no record has backbone nope" in bad.stderr


def test_reference_folders_without_sources_or_with_bad_ones(tmp_path):
    record(tmp_path)
    (tmp_path / "ref").mkdir()
    text = table.build(tmp_path, tmp_path / "out", figures=False, reference_dir=tmp_path / "ref")
    assert "| published" not in text
    (tmp_path / "ref" / "sources.yaml").write_text("x: [unclosed")
    with pytest.raises(UserError, match="cannot parse"):
        table.build(tmp_path, tmp_path / "out", figures=False, reference_dir=tmp_path / "ref")
    (tmp_path / "ref" / "sources.yaml").write_text("t:\n  cite: c\n  short: s\n  match: [arch]\n  value: acc\n")
    (tmp_path / "ref" / "t.csv").write_text("arch,dataset\nresnet50,cifar10\n")
    with pytest.raises(UserError, match="lacks the columns acc"):
        table.build(tmp_path, tmp_path / "out", figures=False, reference_dir=tmp_path / "ref")


def brute_p(pred_a, pred_b, y, metric, resamples=stats.RESAMPLES, seed=stats.BOOTSTRAP_SEED, chunk=100):
    """The bootstrap's p re-done by brute force: the same resamples, each difference as an exact Fraction."""
    rng, signs = np.random.default_rng(seed), []
    ca, cb = (pred_a == y).sum(0), (pred_b == y).sum(0)
    for start in range(0, resamples, chunk):
        for idx in rng.integers(0, len(y), (min(chunk, resamples - start), len(y)), dtype=np.int32):
            d = [Fraction(int(ca[i]), len(pred_a)) - Fraction(int(cb[i]), len(pred_b)) for i in idx]
            if metric == "top1":
                total = sum(d)
            else:
                classes = {}
                for i, v in zip(idx, d):
                    classes.setdefault(int(y[i]), []).append(v)
                total = sum(sum(v) / len(v) for v in classes.values())
            signs.append((total > 0) - (total < 0))
    signs = np.array(signs)
    return min(1.0, 2 * min((signs <= 0).sum(), (signs >= 0).sum()) / len(signs)), int((signs == 0).sum())


@pytest.mark.parametrize("metric", ["top1", "mean_per_class"])
def test_bootstrap_counts_exact_ties_on_both_sides(metric):
    """A case built to tie: a and b differ on two examples only (a right on one, b on the other), with
    three seeds against two so the per-example differences are thirds and halves (never exact in binary)."""
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    a = np.stack([y] * 3)
    b = np.stack([y] * 2)
    a[:, 0] = 1        # a wrong on example 0 (class 0) in all 3 seeds
    a[1:, 4] = 0       # and on example 4 in two seeds of three
    b[:, 3] = 2        # b wrong on example 3 (class 0) in both seeds
    b[0, 5] = 0        # and on example 5 in one seed of two
    ours = stats.paired_bootstrap(a, b, y, metric=metric)
    p, ties = brute_p(a, b, y, metric)
    assert ties > 20 and ours["ties"] == ties  # the case does tie, and exactly as often as brute force says
    assert ours["p"] == pytest.approx(p)
    assert ours["delta"] < 0
    # the float count this replaces misreads some ties (thirds and halves that cancel as +-1e-16): the case
    # is one where counting on floats gives another p
    diff = (a == y).mean(0) - (b == y).mean(0)
    rng, floats = np.random.default_rng(stats.BOOTSTRAP_SEED), []
    for _ in range(0, stats.RESAMPLES, 100):
        idx = rng.integers(0, len(y), (100, len(y)), dtype=np.int32)
        floats.append(stats.metric_of(diff[idx], y[idx], metric, 3))
    floats = np.concatenate(floats)
    assert (floats == 0).sum() < ties
    assert min(1.0, 2 * min((floats <= 0).mean(), (floats >= 0).mean())) != pytest.approx(p)


def test_filters_keep_each_rows_partner_and_tests(tmp_path):
    record(tmp_path, method="linear")
    record(tmp_path, method="sea", seeds=(0, 1, 2), accuracy=0.9)
    full = table.build(tmp_path, tmp_path / "out", figures=False)
    only = table.build(tmp_path, tmp_path / "out", figures=False, method=["sea"])
    line = lambda text: next(x for x in text.splitlines() if "| sea" in x)
    assert line(only) == line(full) and "(+" in line(only)  # Δ and its star survive the filter
    assert "No Δ" not in only and "| linear " not in only.split("\n\n")[0]
    against = lambda text: next(x for x in text.split("Against the linear probe")[1].splitlines() if "| sea" in x)
    assert against(only) == against(full)  # the wins / ties / losses line too


def test_csv_is_data_json_empty_where_none_and_p_at_its_resolution(tmp_path):
    record(tmp_path, method="linear", accuracy=0.5)
    record(tmp_path, method="sea", seeds=(0, 1, 2), accuracy=0.95)
    record(tmp_path, method="linear", dataset="dtd", backbone="other", published=False)
    table.build(tmp_path, tmp_path / "out", figures=False)
    csv = pd.read_csv(tmp_path / "out" / "table.csv", keep_default_na=False)
    sea, linear = csv[csv.method == "sea"].iloc[0], csv[(csv.method == "linear") & (csv.dataset == "cifar10")].iloc[0]
    assert json.loads(sea["chosen"]) == {} and json.loads(sea["edge"]) == {}
    assert linear["std"] == "" and linear["significant"] == "" and linear["paired_p"] == ""  # one seed; untested
    assert sea["paired_p"] == f"< 2/{stats.RESAMPLES}" and sea["significant"] == "True"
    assert float(sea["ci_hi"]) <= 100.0 and float(sea["ci_half"]) > 0
    published = csv[csv.method == "published"]
    assert len(published) and (published["citation"].str.startswith("Lee et al.")).all()


def test_wilcoxon_is_listed_for_one_dataset_with_its_floor_and_zero_method(tmp_path):
    record(tmp_path, method="linear")
    record(tmp_path, method="sea", seeds=(0, 1), accuracy=0.9)
    text = table.build(tmp_path, tmp_path / "out", figures=False)
    assert "n = 1, p = 1 (cannot reach p < 0.05: its floor is 1)" in text
    assert "zero_method='wilcox'" in text and "fewer than 6 non-zero differences" in text
    assert stats.wilcoxon([0.0, 1.0, 2.0]) == {"n": 3, "nonzero": 2, "min_p": 0.5,
                                               "p": pytest.approx(sps.wilcoxon([0.0, 1.0, 2.0]).pvalue)}
    assert stats.wilcoxon([0.0])["p"] is None


def test_wins_ties_losses_and_top1_on_every_dataset(tmp_path):
    for k, d in enumerate(("cifar10", "dtd", "pets")):
        record(tmp_path, dataset=d, metric="mean_per_class" if d == "pets" else "top1")
        record(tmp_path, dataset=d, method="sea", seeds=(0, 1), accuracy=(0.97, 0.85, 0.5)[k],
               metric="mean_per_class" if d == "pets" else "top1")
    every = results.load_all(tmp_path)
    by_path = {r["path"]: r for r in every}
    tests = compare.wilcoxon(compare.paired(table.frame(every), by_path))
    assert (tests.iloc[0]["wins"], tests.iloc[0]["ties"], tests.iloc[0]["losses"]) == (1, 1, 1)
    top1 = compare.paired(table.frame(every, "top1"), by_path, "top1")
    pets = top1[(top1.dataset == "pets") & (top1.method == "sea")].iloc[0]
    rec = by_path[pets["record"]]
    assert pets["mean"] == pytest.approx(np.mean(rec["test"]["top1"])) and pets["metric"] == "top1"
    text = table.build(tmp_path, tmp_path / "out", figures=False, metric="top1")
    assert "pets: top1" in text
    pets_published = next(line for line in text.splitlines() if "| published" in line).split("|")[5]
    assert pets_published.strip() == "70.08"  # the paper's mean per-class number, not held against our top-1
    assert "[ours" in next(line for line in text.splitlines() if "| published" in line).split("|")[4]  # cifar10: both top-1


def test_figures_tell_series_apart_and_mark_the_chosen_point(tmp_path, monkeypatch):
    looks = {tuple(plots.style(k).values()) for k in range(25)}
    assert len(looks) == 25  # past the 10 colours, markers differ
    curve = [{"point": {"penalty": pen, "mix": mix}, "val": 80.0 + k + (mix == 0.5)}
             for k, pen in enumerate((0.01, 0.1, 1.0)) for mix in (0.5, 1.0)]
    prof = plots.profiles(curve)
    assert prof == {"penalty": [(0.01, 81.0), (0.1, 82.0), (1.0, 83.0)], "mix": [(0.5, 83.0), (1.0, 82.0)]}
    record(tmp_path, method="linear")
    record(tmp_path, method="sea", seeds=(0, 1), accuracy=0.95)
    table.build(tmp_path, tmp_path / "out")
    assert all((tmp_path / "out" / f).stat().st_size > 1000 for f in ("delta.png", "cost_gain.png", "val_curves.png"))
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig))
    every = results.load_all(tmp_path)
    df = compare.paired(table.frame(every), {r["path"]: r for r in every})
    assert df.loc[df.method == "sea", "significant"].tolist() == [True]
    plots.delta(df, ["cifar10"], tmp_path / "d.png")
    filled = [line for line in figures[0].axes[0].lines if line.get_marker() == "o" and line.get_mfc() != "white"]
    assert len(filled) == 1 and filled[0].get_zorder() > 2  # the significant one, drawn over the hollow marker
    assert figures[0].axes[0].get_title().startswith("Difference to the linear probe")


def test_run_prints_the_tables_interval_not_the_std(caplog):
    from bench import job

    rec = {"dataset": "digits", "backbone_label": "pixels", "backbone": "pixels", "method": "sea", "metric": "top1",
           "test": {"score": [91.0, 93.0, 95.0]}, "chosen": {}}
    with caplog.at_level(logging.INFO, logger="bench.job"):
        job.report(rec, Path("x.json"))
        job.report(rec | {"test": {"score": [91.0]}}, Path("x.json"))
    first, second = caplog.messages[-2:]
    assert "93.00 ± 4.97 (95% interval) over 3 seed(s)" in first  # as the table's cell; the std would be 2.00
    assert "91.00 over 1 seed(s)" in second and "±" not in second
