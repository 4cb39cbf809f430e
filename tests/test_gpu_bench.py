"""benchmarks/gpu.py, the GPU check, at its tiny sizes on the CPU (so it cannot rot where no GPU is at hand),
and the arithmetic of its GPU-hours table (benchmarks/gpu_cost.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_datasets_real_sizes import DESIGN

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu
import gpu_cost

FIGURES = ["extraction_images_per_s", "extraction_bare_images_per_s", "extraction_config_workers_images_per_s",
           "extraction_gpu_decode_images_per_s", "probe_seconds",
           *(f"method_{m}_seconds_per_point" for m in gpu.METHODS), "finetune_loop_images_per_s",
           "finetune_step_images_per_s", "finetune_step_channels_last_images_per_s",
           "finetune_step_channels_last_compiled_images_per_s", "finetune_step_compiled_images_per_s",
           "table_feature_gpu_hours", "table_finetune_gpu_hours",
           *(f"flow_8px_{k}_step_s" for k in ("glow", "finetune", "finetune_flow_adv", "finetune_flow_rand"))]


@pytest.mark.heavy
def test_the_tiny_check_gives_every_figure_with_sane_values(tmp_path, capsys):
    assert gpu.main(["--tiny", "--out", str(tmp_path), "--workers", "0", "--config-workers", "0"]) == 0
    out = json.loads((tmp_path / "gpu.json").read_text())
    printed = capsys.readouterr().out
    assert out["errors"] == {} and out["skipped"] == []
    assert list(out["figures"]) == FIGURES
    for name, figure in out["figures"].items():
        assert f"[{name}] " in printed  # one line per figure
        assert isinstance(figure["value"], float) and 0 < figure["value"] < 1e9, (name, figure)
    probe = out["figures"]["probe_seconds"]
    assert probe["sklearn_penalties_fitted"] == 45 and probe["same_pick"] is True
    # 100 test rows, 5 classes: chance is 20%; the two fits of the same penalty may differ by a row or two
    assert 30 < probe["test_ours"] <= 100 and abs(probe["test_ours"] - probe["test_sklearn"]) <= 2
    for m in gpu.METHODS:
        method = out["figures"][f"method_{m}_seconds_per_point"]
        assert method["peak_memory_bytes"] > 0 and method["measured_seconds"] > 0
    # the YAML's 100 epochs from 1 measured: the per-point figure is the measured one scaled (flow: its fits once)
    sgd = out["figures"]["method_sgd_seconds_per_point"]
    assert sgd["value"] == pytest.approx(sgd["measured_seconds"] * 100 / 6)
    table = out["table"]
    assert set(table["datasets"]) == set(gpu_cost.TASKS) and table["finetune_runs_per_dataset"] == 63
    total = sum(row["feature_seconds"] for row in table["datasets"].values()) / 3600
    assert out["figures"]["table_feature_gpu_hours"]["value"] == pytest.approx(total, rel=1e-3)


@pytest.mark.parametrize("name", gpu_cost.TASKS)
def test_split_sizes_from_the_loaders_and_configs_are_design_sections_4(name):
    sizes = gpu_cost.split_sizes(name)
    if name == "cars":  # carved per class: DESIGN gives ~6,515 / ~1,629, its val is 20% per class
        assert (sizes["train"], sizes["val"], sizes["test"]) == (6_515, 1_629, 8_041)
    else:
        assert (sizes["train"], sizes["val"], sizes["test"]) == DESIGN[name]


def test_the_tables_cost_is_the_sum_of_its_runs():
    """One dataset by hand: DTD (1,880 / 1,880 / 1,880, 47 classes) at a measured shape of 1,000 rows."""
    shape = {"train": 1000, "classes": 101, "probe_train": 2000}
    per_point = {m: 1.0 for m in gpu_cost.FEATURE_METHODS} | {"isda": 2.0}
    figures = {"extraction_images_per_s": 564.0, "probe_seconds": 90.0, "seconds_per_point": per_point,
               "finetune_images_per_s": 640.0}
    points = {"linear": 45} | {m: 10 for m in gpu_cost.FEATURE_METHODS}
    finetune = {"points": 20, "seeds": 3, "steps": 100, "batch_size": 64}
    dtd = gpu_cost.table_cost(figures, shape=shape, grid_points=points, finetune=finetune)["datasets"]["dtd"]
    fit, refit = 1.88, 3.76  # train rows, train+val rows over the measured 1,000; 47 classes: not scaled
    probe = 90.0 * 1000 / 2000
    assert dtd["seconds"]["extraction"] == pytest.approx(3 * 1880 / 564)
    assert dtd["seconds"]["linear"] == pytest.approx(probe * fit + probe / 45 * refit, abs=0.01)
    assert dtd["seconds"]["isda"] == pytest.approx(2.0 * 10 * fit + 2.0 * refit, abs=0.01)
    assert dtd["seconds"]["sea"] == pytest.approx(10 * fit + refit, abs=0.01)
    runs = 20 * 3 + 3
    assert dtd["finetune_seconds"] == pytest.approx(runs * 100 * 64 / 640 + (60 * 1880 + 3 * 1880) / 564, abs=0.1)
    sun = gpu_cost.table_cost(figures, shape=shape, grid_points=points, finetune=finetune)["datasets"]["sun397"]
    assert sun["seconds"]["sea"] == pytest.approx((10 * 15.88 + 19.85) * 397 / 101, abs=0.01)
