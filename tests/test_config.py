"""Every config composes, and its keys are the arguments of the code it configures."""

import importlib
import inspect
import itertools

import pytest
import torch
from hydra import compose, initialize_config_dir

from bench import config

CONF, names = config.CONF, config.choices


def composed(*overrides):
    return config.compose(list(overrides))


def test_defaults_are_the_real_setting():
    cfg = composed()
    assert cfg["backbone"]["name"] == "mocov2_r50" and cfg["backbone"]["arch"] == "resnet50"
    assert cfg["dataset"]["name"] == "dtd" and cfg["method"]["name"] == "linear"
    assert cfg["protocol"]["name"] == "selection" and cfg["seeds"] == 3


@pytest.mark.parametrize("method", names("method"))
def test_methods_compose_and_their_grids_sweep_their_params(method):
    cfg = composed(f"method={method}")["method"]
    assert cfg["name"] == method and set(cfg["grid"]) <= set(cfg["params"])
    assert all(isinstance(v, list) and v for v in cfg["grid"].values())
    entry = "learner" if cfg.get("inputs") == "images" else "fit"  # fine-tuning takes images, not features
    assert callable(getattr(importlib.import_module(cfg["module"]), entry))


def test_finetune_grid_is_the_ssl_transfer_grid():
    cfg = composed("method=finetune")["method"]
    assert cfg["grid"]["lr"] == pytest.approx([1e-1, 1e-2, 1e-3, 1e-4])  # largest first, as ssl-transfer's
    # weight decay in {0} + logspace(-6, -3, 4) / lr, swept as the product lr x weight decay
    assert cfg["grid"]["lr_weight_decay"] == pytest.approx([0.0, 1e-6, 1e-5, 1e-4, 1e-3])
    assert cfg["params"]["steps"] == 5000 and cfg["params"]["batch_size"] == 64 and cfg["params"]["nesterov"]
    for aux in ("isda", "afan", "augself"):
        variant = composed(f"method=finetune_{aux}")["method"]
        assert variant["params"][aux]["enabled"] and variant["grid"] == cfg["grid"]
        assert [k for k in ("isda", "afan", "augself") if variant["params"][k]["enabled"]] == [aux]


def test_linear_grid_is_45_log_spaced_penalties():
    grid = composed("method=linear")["method"]["grid"]["penalty"]
    assert len(grid) == 45 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e5)
    assert all(b / a == pytest.approx(10 ** 0.25) for a, b in itertools.pairwise(grid))


@pytest.mark.parametrize("dataset", names("dataset"))
def test_datasets_name_a_loader_and_a_metric(dataset):
    cfg = composed(f"dataset={dataset}")["dataset"]
    assert cfg["metric"] in ("top1", "mean_per_class")
    module, _, function = cfg["load"]["_target_"].rpartition(".")
    loader = getattr(importlib.import_module(module), function)
    params = inspect.signature(loader).parameters
    assert set(cfg["load"]) - {"_target_"} <= set(params) and "root" in params


def test_the_demo_sweeps_two_backbones_and_seven_methods():
    assert composed("experiment=demo")["dataset"]["name"] == "digits"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweep = compose("config", overrides=["experiment=demo"], return_hydra_config=True).hydra.sweeper.params
    assert sweep["backbone"] == "pixels,random_resnet10t"
    assert sweep["method"].split(",") == ["linear", "sgd", "sea", "isda", "noise", "afan", "flow"]


def ssl_transfer_pick(grid_lr, grid_wd, val):
    """ssl-transfer's finetune.py, re-typed: lr = logspace(-4, -1, 4).flip(0), wd = [0] + logspace(-6, -3, 4),
    the grid (lr, wd / lr) lr-major, and `if val_acc > best_score` over it: the first best point wins."""
    lr = torch.logspace(-4, -1, 4, dtype=torch.float64).flip(0)
    wd = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-6, -3, 4, dtype=torch.float64)])
    best_score, best = 0, None
    for lr_value in lr.tolist():
        for w in wd.tolist():
            point = (min(grid_lr, key=lambda v: abs(v - lr_value)), min(grid_wd, key=lambda v: abs(v - w)))
            if val[point] > best_score:
                best_score, best = val[point], point
    return best


@pytest.mark.parametrize("case", ["all-tied", "two-lrs-tied", "one-best"])
def test_finetune_ties_go_to_the_largest_lr_as_ssl_transfers(case):
    from bench import protocol

    cfg = composed("method=finetune")["method"]
    grid = {k: cfg["grid"][k] for k in ("lr", "lr_weight_decay")}
    score = {(lr, wd): 0.5 for lr in grid["lr"] for wd in grid["lr_weight_decay"]}
    if case == "two-lrs-tied":
        score[(1e-3, 1e-5)] = score[(1e-2, 1e-4)] = score[(1e-2, 1e-6)] = 0.9
    elif case == "one-best":
        score[(1e-4, 1e-3)] = 0.9
    labels = {split: torch.zeros(10, dtype=torch.long) for split in ("val", "test")}

    def fit_score(points, fit_on, score_on, start=None, rate=None):  # a learner whose val accuracy is the table's
        rows = []
        for p in points:
            right = round(10 * score[(p["lr"], p["lr_weight_decay"])]) if score_on == "val" else 10
            rows.append(torch.tensor([0] * right + [1] * (10 - right)))
        return torch.stack(rows), None

    chosen = protocol.choose(fit_score, labels, params=dict(cfg["params"]), grid=grid, seeds=[0],
                             metric="top1")["chosen"]
    assert (chosen["lr"], chosen["lr_weight_decay"]) == ssl_transfer_pick(grid["lr"], grid["lr_weight_decay"], score)
    if case == "all-tied":
        assert (chosen["lr"], chosen["lr_weight_decay"]) == (0.1, 0.0)
