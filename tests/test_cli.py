"""The command line as a user runs it: the demo, the table, given features, and bad input."""

import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
def test_demo_and_table(seabench, tmp_path):
    """`make demo` end to end: its 14 cells (2 backbones x 7 methods, each with its whole grid and 100 epochs)
    learn the real digits, their records hold what the table needs, and the table is built from them. One
    seed, not the demo's 3 (half the suite's time otherwise): the seeds of a stochastic method are stacked
    heads of one fit, which the next test runs through the CLI for each method, and the unit tests check
    head by head (a stacked head equals the head trained alone)."""
    out = seabench("run", "-m", "experiment=demo", "seeds=1")
    records = sorted((tmp_path / "results" / "runs" / "digits").rglob("*.json"))
    assert len(records) == 14, out.stdout + out.stderr
    for path in records:
        record = json.loads(path.read_text())
        assert record["protocol_version"] == 2 and record["dataset"] == "digits"
        assert set(record["timings"]) >= {"backbone", "fit", "features_train", "features_val", "features_test"}
        assert len(record["test"]["top1"]) == 1 and record["test"]["top1"][0] > 60  # real learning on real digits
        assert record["provenance"]["packages"]["torch"]
        # what makes the row differ between machines; the demo fixes its threads (conf/experiment/demo.yaml)
        assert record["provenance"]["numerics"]["threads"] == 2 and record["provenance"]["numerics"]["cpu_capability"]
        extract = record["cost"]["stages"]["extract_train"]
        assert extract["extraction_images"] == record["sizes"]["train"] and extract["extraction_seconds"] > 0
        assert extract["images"] == (0 if extract["cached"] else record["sizes"]["train"])
        assert record["cost"]["stages"]["fit"]["seconds"] == record["timings"]["fit"]
        if record["method"] == "sea":
            assert "eta" in record["chosen"]
        if record["method"] == "flow":
            assert record["timings"]["flow_fit"] > 0 and not record["method_costs"]["flow_fits"][0]["hit"]
            assert record["method_costs"]["flow_fits"][0]["fit_seconds"] > 0
    table = seabench("table").stdout
    assert "random-init ResNet-10-T" in table and "pixels" in table and "digits" in table
    assert "Numerics (what makes a row differ between machines): 2 threads" in table
    assert (tmp_path / "results" / "table.md").read_text().strip() == table.strip()
    assert len((tmp_path / "results" / "table.csv").read_text().splitlines()) == 15
    # a second run of the same cell is skipped, and extracts nothing
    again = seabench("run", "dataset=digits", "backbone=random_resnet10t", "method=linear", "seeds=1")
    assert "skipping" in again.stdout + again.stderr


def test_every_stochastic_method_of_the_demo_runs_its_seeds_through_the_cli(seabench, tmp_path):
    """The demo's default, 3 seeds, for each method of the SGD family with its whole grid (5 epochs here), and
    one for the deterministic probe. One run per method: a sweep over methods cannot also set their params
    (Hydra composes the sweep's base config with the default method, which has no epochs)."""
    for method in ("sgd", "sea", "isda", "noise", "afan", "flow"):
        seabench("run", "dataset=digits", "backbone=pixels", f"method={method}", "method.params.epochs=5")
    seabench("run", "dataset=digits", "backbone=pixels", "method=linear")
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json"))}
    assert sorted(records) == sorted(["linear", "sgd", "sea", "isda", "noise", "afan", "flow"])
    for method, record in records.items():
        seeds = 1 if method == "linear" else 3
        assert len(record["test"]["top1"]) == len(record["test"]["predictions"]) == seeds, method
        assert min(record["test"]["top1"]) > 60, method


def test_a_flow_run_records_its_flow_fits(seabench, tmp_path):
    """The flow's fits (train, then train+val at the refit): their cost and how each ended are in the record;
    the same cell run again reads both flows from the cache."""
    cell = ["run", "dataset=digits", "backbone=pixels", "method=flow", "seeds=1", "method.params.epochs=10",
            "method.grid.mode=[adv]", "method.grid.eps=[0.3]", "method.grid.center=[false]"]
    seabench(*cell)
    (path,) = (tmp_path / "results" / "runs").rglob("flow-*.json")
    first = json.loads(path.read_text())
    seabench(*cell, "skip_existing=false")  # the same record path, written again
    again = json.loads(path.read_text())
    fits = first["method_costs"]["flow_fits"]
    assert first["timings"]["flow_fit"] > 0 and all(math.isfinite(f["final_nll_per_dim"]) for f in fits)
    assert len(fits) == 2 and not any(f["hit"] for f in fits)  # train, then train+val: other features
    assert all(f["hit"] for f in again["method_costs"]["flow_fits"])  # cached by content: reused
    assert min(first["test"]["top1"]) > 60


@pytest.fixture
def given(tmp_path):
    """Features in the SeA reference code's format: torch.save'd tensors and label lists."""
    torch.manual_seed(0)
    centers = torch.eye(3, 8) * 6  # well apart in direction too: the SGD family normalises features
    files = set()
    for split, n in [("train", 90), ("test", 30)]:
        y = torch.arange(n) % 3
        torch.save(centers[y] + torch.randn(n, 8), tmp_path / f"{split}_feat.pth")
        torch.save(y.tolist(), tmp_path / f"{split}_label.pth")
        files |= {f"dataset.load.{split}_feat_path={tmp_path / f'{split}_feat.pth'}",
                  f"dataset.load.{split}_label_path={tmp_path / f'{split}_label.pth'}"}
    return sorted(files)


def test_given_features_reference_protocol(seabench, tmp_path, given):
    seabench("run", "dataset=features", "method=sea", "protocol=reference", "method.params.epochs=50", *given)
    (path,) = (tmp_path / "results" / "runs" / "features" / "given").glob("sea-reference-*.json")
    record = json.loads(path.read_text())
    assert record["sizes"] == {"train": 90, "test": 30} and record["params"]["eta"] == 0.8
    assert record["curve"] == [] and sum(record["test"]["top1"]) / 3 > 85  # chance: 33


def test_given_features_without_val_carve_it_from_train(seabench, tmp_path, given):
    seabench("run", "dataset=features", "method=linear", "method.grid.penalty=[0.1,10.0]", *given)
    (path,) = (tmp_path / "results" / "runs" / "features" / "given").glob("linear-selection-*.json")
    assert json.loads(path.read_text())["sizes"] == {"train": 81, "val": 9, "test": 30}


def error_of(out) -> str:
    assert out.returncode != 0
    return out.stdout + out.stderr


def test_unknown_dataset_lists_the_known_ones(seabench, tmp_path):
    text = error_of(seabench("run", "dataset=nope", check=False))
    assert "nope" in text and "digits" in text and "dtd" in text


def test_unknown_command(seabench, tmp_path):
    text = error_of(seabench("frobnicate", check=False))
    assert "unknown command 'frobnicate'" in text and "run" in text


def test_default_run_names_what_is_missing(seabench, tmp_path):
    text = error_of(seabench("run", "method=sea", "dataset=dtd", check=False))
    assert "dtd" in text.lower() and str(tmp_path / "data") in text and "Traceback" not in text
    text = error_of(seabench("run", "dataset=digits", check=False))  # default backbone: MoCo v2
    assert "moco_v2_800ep_pretrain.pth.tar" in text and str(tmp_path / "cache") in text
    assert "Traceback" not in text
    assert not (tmp_path / "results" / "runs").exists()


def test_missing_feature_file(seabench, tmp_path, given):
    args = [a.replace("test_feat.pth", "absent.pth") for a in given]
    text = error_of(seabench("run", "dataset=features", "method=linear", *args, check=False))
    assert "test features file not found" in text and "absent.pth" in text and "Traceback" not in text


def test_features_and_labels_of_different_lengths(seabench, tmp_path, given):
    torch.save(list(range(3)) * 29, tmp_path / "train_label.pth")  # 87 labels for 90 rows
    text = error_of(seabench("run", "dataset=features", "method=linear", *given, check=False))
    assert "train features have 90 rows but train labels have 87 entries" in text and "Traceback" not in text
    assert not (tmp_path / "results" / "runs").exists()


def test_a_changed_checkpoint_behind_the_same_path_is_a_new_run(seabench, tmp_path):
    import timm

    ckpt = tmp_path / "mine.pth"
    args = ["dataset=digits", "backbone=local", "backbone.arch=test_resnet", f"backbone.checkpoint={ckpt}", "backbone.layout=torchvision",
            "backbone.preprocess.resize=16", "backbone.preprocess.crop=16", "method=linear",
            "method.grid.penalty=[1.0]"]
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), ckpt)
        out = seabench("run", *args)
        assert "skipping" not in out.stdout + out.stderr
    records = list((tmp_path / "results" / "runs" / "digits" / "local").glob("*.json"))
    assert len(records) == 2
    assert len({json.loads(p.read_text())["weights_sha256"] for p in records}) == 2
    assert "skipping" in seabench("run", *args).stdout  # the same weights again: skipped


def test_a_sweep_runs_every_cell_and_then_reports_the_failures(seabench, tmp_path):
    out = seabench("run", "-m", "dataset=dtd,digits", "backbone=pixels", "method=linear", "method.grid.penalty=[1.0]",
                   check=False)
    assert out.returncode == 2
    assert len(list((tmp_path / "results" / "runs" / "digits").rglob("*.json"))) == 1
    assert "1 run(s) of the sweep failed" in out.stderr and "dataset dtd is not on disk" in out.stderr


def test_finetune_needs_images_and_a_protocol_it_knows(seabench, tmp_path, given):
    text = error_of(seabench("run", "dataset=features", "method=finetune", *given, check=False))
    assert "method=finetune trains on images; dataset=features gives ready-made features" in text
    assert "Traceback" not in text and not (tmp_path / "results" / "runs").exists()


@pytest.mark.parametrize("override,message", [
    ("method.grid.penalty=0.5", "method.grid.penalty must be a non-empty list"),
    ("dataset.metric=top5", "unknown metric 'top5'"),
    ("device=nonsense", "device 'nonsense' is not supported; use auto, cpu, cuda or cuda:N"),
    ("seeds=0", "seeds must be a positive integer"),
])
def test_bad_settings_fail_before_any_work(seabench, tmp_path, override, message):
    text = error_of(seabench("run", "dataset=digits", "backbone=pixels", "method=linear", override, check=False))
    assert message in text and "Traceback" not in text
    assert not (tmp_path / "cache" / "features").exists()


def test_pixels_on_a_folder_of_28x28_images(seabench, tmp_path):
    """A user's own folder: named after itself, val carve logged, pixels at the data's size, a skipped file in
    the record's warnings, and a preprocessing override on its own table row."""
    from PIL import Image

    for split, n in (("train", 8), ("test", 3)):
        for c in range(3):
            for i in range(n):
                path = tmp_path / "mnistlike" / split / f"class{c}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (28, 28), color=40 + 80 * c).save(path)
    (tmp_path / "mnistlike" / "train" / "README.txt").write_text("a note, not an image")
    args = ["dataset=folder", f"dataset.load.path={tmp_path / 'mnistlike'}", "backbone=pixels", "method=linear",
            "method.grid.penalty=[1.0]", "extract.num_workers=0"]
    out = seabench("run", *args)
    assert "carved 3 of the 24 train images as val" in out.stdout and "center crop 28x28" in out.stdout
    (path,) = (tmp_path / "results" / "runs" / "mnistlike" / "pixels").glob("*.json")
    record = json.loads(path.read_text())
    assert record["dataset"] == "mnistlike" and record["preprocess"]["crop"] == 28
    assert record["backbone_overrides"] == [] and "train/README.txt" in record["warnings"][0]
    seabench("run", *args, "backbone.preprocess.resize=8", "backbone.preprocess.crop=8")
    from bench.report import table

    text = table.build(tmp_path / "results", tmp_path / "results")
    assert "| pixels " in text and "| pixels [preprocess.crop=8, preprocess.resize=8] " in text


def test_a_probe_sweep_ended_early_is_recorded_and_tabled(seabench, tmp_path):
    """`method.params.early_end=2` (an option, off by default) through the CLI on the real digits: the record
    says which penalties were not fitted (no val score, `stop: early end`), the pick is among the fitted ones,
    and the table and its val-curve figure are built from such a record."""
    seabench("run", "dataset=digits", "backbone=pixels", "method=linear", "method.params.early_end=2", "seeds=1")
    (path,) = (tmp_path / "results" / "runs" / "digits").rglob("linear-*.json")
    record = json.loads(path.read_text())
    skipped = [c for c in record["curve"] if c["val"] is None]
    assert record["params"]["early_end"] == 2 and skipped
    assert all(c["fit"][0]["stop"] == "early end" for c in skipped)
    assert record["chosen"]["penalty"] > max(c["point"]["penalty"] for c in skipped)
    assert "digits" in seabench("table").stdout
    assert (tmp_path / "results" / "val_curves.png").stat().st_size > 0
