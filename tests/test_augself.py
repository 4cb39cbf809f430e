"""protocol=augself: its splits equal torch's random_split with AugSelf's seeds and its shipped index lists;
its probe minimises AugSelf's objective (checked against autograd + an independent torch.optim.LBFGS run)."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from fake_datasets import FAKES

from bench import UserError, protocol
from bench.data import augself
from bench.methods import augself_linear
from bench.report import reference, table

SEEDS = {"food101": 42, "cifar10": 43, "cifar100": 44, "pets": 49, "mit67": 51}  # AugSelf's datasets.py


@pytest.mark.parametrize("name", sorted(augself.RANDOM_SPLIT))
def test_split_members_equal_random_split_with_augself_seeds(name):
    n_train, n_val, seed = augself.RANDOM_SPLIT[name]
    assert seed == SEEDS[name]
    train, val = torch.utils.data.random_split(range(n_train + n_val), [n_train, n_val],
                                               generator=torch.Generator().manual_seed(SEEDS[name]))
    ours = augself.random_split_indices(n_train + n_val, n_val, seed)
    assert ours == (list(train.indices), list(val.indices))


@pytest.fixture(scope="module")
def fakes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for name in ("cifar10", "pets", "mit67", "food101", "caltech101"):
        FAKES[name].write(root)
    return root


def loader(name):
    return importlib.import_module({"cifar10": "bench.data.cifar", "pets": "bench.data.pets",
                                    "mit67": "bench.data.mit67", "food101": "bench.data.food101",
                                    "caltech101": "bench.data.caltech"}[name])


@pytest.mark.parametrize("name", ["cifar10", "pets", "mit67", "food101"])
def test_loaders_split_their_official_train_list_in_augself_order(name, fakes):
    canonical = loader(name).load(root=fakes, **FAKES[name].options, strict=False)
    task = loader(name).load(root=fakes, **FAKES[name].options, strict=False, split="augself")
    trainval = canonical.splits["train"].items + canonical.splits["val"].items
    if name == "mit67":  # ImageFolder's order: class folders sorted, files sorted
        order = sorted(trainval, key=lambda i: tuple(i.split("/")[1:]))
    else:  # the official list's order, which the canonical loader keeps in its train and val parts
        position = {item: k for k, item in enumerate(loader_order(name, fakes))}
        order = sorted(trainval, key=position.__getitem__)
    n_val = augself.val_size(name, len(order), strict=False)
    train, val = torch.utils.data.random_split(order, [len(order) - n_val, n_val],
                                               generator=torch.Generator().manual_seed(SEEDS[name]))
    assert task.splits["train"].items == list(train) and task.splits["val"].items == list(val)
    assert task.splits["test"].items == canonical.splits["test"].items
    labels = dict(zip(trainval, canonical.splits["train"].labels + canonical.splits["val"].labels))
    assert task.splits["val"].labels == [labels[i] for i in val]


def loader_order(name, root):
    if name == "cifar10":
        return [f"train/{i}" for i in range(60)]
    if name == "pets":
        return [f"images/{line.split()[0]}.jpg" for line in
                (root / "oxford-iiit-pet/annotations/trainval.txt").read_text().splitlines()]
    listing = json.loads((root / "food-101/meta/train.json").read_text())
    classes = (root / "food-101/meta/classes.txt").read_text().split()
    return [f"images/{e}.jpg" for c in classes for e in listing[c]]


def test_strict_sizes_are_augself_s():
    assert augself.val_size("cifar10", 50_000, strict=True) == 5_000
    with pytest.raises(UserError, match="needs 50,000"):
        augself.val_size("cifar10", 49_999, strict=True)


def test_index_lists_pick_the_shipped_indices_in_order(tmp_path):
    items = [f"x/{i}.jpg" for i in range(19_850)]
    labels = [i % 2 for i in range(len(items))]  # two classes: a classifier needs at least two
    task = augself.task("sun397", tmp_path, ["a", "b"], (items, labels), (["t.jpg"], [0]), strict=True)
    lists = json.loads((augself.SPLITS_DIR / "sun397.json").read_text())
    assert task.splits["train"].items == [items[i] for i in lists[0]] and len(task.splits["train"]) == 15_880
    assert task.splits["val"].items == [items[i] for i in lists[1]] and len(task.splits["val"]) == 3_970
    assert task.splits["test"].items == ["t.jpg"]
    caltech = [f"c/{i}.jpg" for i in range(8_677)]
    task = augself.task("caltech101", tmp_path, ["a", "b"], (caltech, [i % 2 for i in range(len(caltech))]), None,
                        strict=True)
    assert [len(task.splits[s]) for s in ("train", "val", "test")] == [2_525, 505, 5_647]


def test_index_lists_need_the_full_dataset_and_an_intact_file(fakes, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="indexes 8,677 examples"):
        loader("caltech101").load(root=fakes, **FAKES["caltech101"].options, strict=False, split="augself")
    shutil.copytree(augself.SPLITS_DIR, tmp_path / "splits")
    (tmp_path / "splits" / "sun397.json").write_text("[[0], [1]]")
    monkeypatch.setattr(augself, "SPLITS_DIR", tmp_path / "splits")
    with pytest.raises(UserError, match="damaged"):
        augself.index_lists("sun397")


def test_loader_options_check_the_rule_and_dtd_partition():
    assert augself.loader_options({"name": "cifar10", "load": {}}, "augself") == {"split": "augself"}
    assert augself.loader_options({"name": "aircraft", "load": {}}, "augself") == {}
    assert augself.loader_options({"name": "cifar10", "load": {}}, "canonical") == {}
    with pytest.raises(UserError, match="partition 1"):
        augself.loader_options({"name": "dtd", "load": {"partition": 2}}, "augself")
    with pytest.raises(UserError, match="unknown split rule"):
        augself.loader_options({"name": "dtd", "load": {}}, "nope")


# ---- the probe --------------------------------------------------------------------------------------------
def problem(dtype, n=60, d=5, c=3):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % c
    X = torch.randn(n, d, generator=g, dtype=torch.float64) + 1.5 * torch.nn.functional.one_hot(y, d)[:, :d] + 3.0
    return X.to(dtype), y  # raw, uncentred features: the probe must not standardise them


def point(w, dtype="float64", **kw):
    return {"penalty": w, "seed": 0, "max_iter": 500, "tolerance_grad": 1e-10, "tolerance_change": 0.0,
            "history_size": 100, "dtype": dtype} | kw


def reference_optimum(X, y, w, c=3):
    """AugSelf's objective written literally (nn.Linear, summed F.cross_entropy, every parameter penalised),
    minimised by torch.optim.LBFGS with autograd, in float64 from zeros."""
    model = torch.nn.Linear(X.shape[1], c).double()
    torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=5000, tolerance_grad=1e-12, tolerance_change=0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X.double()), y, reduction="sum")
        loss = loss + sum(w * p.pow(2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model.weight.detach(), model.bias.detach()


def test_closed_form_gradients_equal_autograd_of_the_literal_objective():
    X, y = problem(torch.float64)
    W = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(X @ W.T + b, y, reduction="sum") + 0.3 * (W.pow(2).sum() + b.pow(2).sum())
    loss.backward()
    ours, grad_W, grad_b = augself_linear.objective(W.detach(), b.detach(), X, torch.nn.functional.one_hot(y, 3).double(),
                                                    0.3)
    assert torch.allclose(ours, loss) and torch.allclose(grad_W, W.grad) and torch.allclose(grad_b, b.grad)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 2e-3)])
def test_the_sweep_reaches_the_optimum_of_augself_objective(dtype, tol):
    X, y = problem(dtype)
    grid = [1e-2, 1.0, 30.0]
    heads = augself_linear.fit(X, y, num_classes=3, points=[point(w, str(dtype).split(".")[1]) for w in grid],
                               device="cpu")
    for g, w in enumerate(grid):
        W, b = reference_optimum(X, y, w)
        assert torch.allclose(heads.weight[g].double(), W, atol=tol, rtol=tol), w
        assert torch.allclose(heads.bias[g].double(), b, atol=tol, rtol=tol), w  # the bias is penalised too
    assert [f["penalty"] for f in heads.fits] == grid and all(f["iterations"] > 0 for f in heads.fits)


def test_bias_is_penalised_and_features_are_raw():
    X, y = problem(torch.float64)
    _, b = reference_optimum(X, y, 30.0)
    heads = augself_linear.fit(X, y, num_classes=3, points=[point(30.0)], device="cpu")
    # the optimum of the objective with w ||b||^2 in it (the unpenalised bias would be another one)
    assert torch.allclose(heads.bias[0], b, atol=1e-6) and b.abs().max() > 1e-3
    shifted = augself_linear.fit(X + 10, y, num_classes=3, points=[point(30.0)], device="cpu")
    assert not torch.allclose(shifted.weight[0], heads.weight[0], atol=1e-3)  # no standardisation inside


def test_init_starts_from_the_given_heads():
    X, y = problem(torch.float64)
    sweep = augself_linear.fit(X, y, num_classes=3, points=[point(1.0)], device="cpu")
    again = augself_linear.fit(X, y, num_classes=3, points=[point(1.0)], device="cpu", init=sweep)
    assert again.fits[0]["iterations"] <= 1 and torch.allclose(again.weight, sweep.weight, atol=1e-8)


def test_protocol_refits_warm_from_the_chosen_point():
    X, y = problem(torch.float32, n=90)
    data = {"train": (X[:45], y[:45]), "val": (X[45:60], y[45:60]), "test": (X[60:], y[60:])}
    params = point(1.0, "float32")
    out = protocol.augself(augself_linear.fit, data, params=params, grid={"penalty": [1e-3, 1.0, 1e3]}, seeds=[0],
                           metric="top1", num_classes=3, device="cpu", split="augself", warm_refit=True)
    assert out["refit_start"].startswith("warm") and out["refit"][0]["iterations"] >= 0
    assert [c["fit"][0]["penalty"] for c in out["curve"]] == [1e-3, 1.0, 1e3]
    best = max(c["val"] for c in out["curve"])
    assert out["chosen"] == next(c["point"] for c in out["curve"] if c["val"] == best)  # the first best
    assert len(out["test"]["predictions"]) == 1 and out["sizes"] == {"train": 45, "val": 15, "test": 30}


# ---- configs and the CLI ----------------------------------------------------------------------------------
def test_experiment_sweeps_the_four_checkpoints_over_the_eleven_datasets():
    from hydra import compose, initialize_config_dir
    from test_config import CONF, composed

    cfg = composed("experiment=augself_table")
    assert cfg["method"]["name"] == "augself_linear" and cfg["protocol"] == {"name": "augself", "split": "augself",
                                                                             "warm_refit": True}
    assert cfg["method"]["params"] | {"penalty": None} == {"penalty": None, "max_iter": 5000, "tolerance_grad": 1e-10,
                                                           "tolerance_change": 0.0, "history_size": 100,
                                                           "dtype": "float32"}
    assert cfg["extract"]["amp"] is False  # AugSelf extracts in float32
    grid = cfg["method"]["grid"]["penalty"]
    assert grid == pytest.approx(torch.logspace(-6, 5, 45, dtype=torch.float64).tolist())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweep = compose("config", overrides=["experiment=augself_table"], return_hydra_config=True).hydra.sweeper.params
    backbones, datasets = sweep["backbone"].split(","), sweep["dataset"].split(",")
    assert len(backbones) == 4 and all(b.startswith("augself_in100_") for b in backbones)
    assert sorted(datasets) == sorted(["cifar10", "cifar100", "food101", "mit67", "pets", "flowers102",
                                       "caltech101", "cars", "aircraft", "dtd", "sun397"])
    published = reference.load(table.REFERENCE)
    for b in backbones:  # each names its 11 published numbers
        block = composed(f"backbone={b}")["backbone"]["published"]
        assert (published["checkpoint"] == json.dumps(block, sort_keys=True)).sum() == 11, b


def test_a_run_under_protocol_augself_records_its_split_and_warm_refit(seabench, tmp_path):
    FAKES["cifar10"].write(tmp_path / "data")
    seabench("run", "backbone=pixels", "dataset=cifar10", "protocol=augself", "method=augself_linear",
             f"data_root={tmp_path / 'data'}", f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'results'}",
             "extract.num_workers=0", *FAKES["cifar10"].overrides, "method.grid.penalty=[0.01,1.0]",
             "method.params.max_iter=20")
    (path,) = (tmp_path / "results" / "runs").rglob("*.json")
    record = json.loads(path.read_text())
    assert record["split_rule"] == "AugSelf: random_split(trainval, [45000, 5000]) with seed 43"
    assert record["sizes"] == {"train": 54, "val": 6, "test": 20} and record["refit_start"].startswith("warm")
    assert record["method"] == "augself_linear" and record["protocol"] == "augself"
    assert all(f["iterations"] <= 20 for c in record["curve"] for f in c["fit"])
