"""The 11 transfer datasets on fake copies in their real on-disk layouts: classes, split sizes from the rule,
labels, disjointness, determinism across processes, metric choice, and loud failures on bad copies."""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_datasets import FAKES

from bench import UserError

REPO = Path(__file__).resolve().parents[1]
NAMES = list(FAKES)
MEAN_PER_CLASS = {"pets", "flowers102", "caltech101", "aircraft"}  # DESIGN section 4; top-1 elsewhere


def spec(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "dataset" / f"{name}.yaml").read_text())


def module(name: str):
    return importlib.import_module(spec(name)["load"]["_target_"].rsplit(".", 1)[0])


def load(name: str, root: Path, strict: bool = False):
    return module(name).load(root=root, **FAKES[name].options, strict=strict)


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> Path:
    """All eleven fake copies under one data root, written once."""
    root = tmp_path_factory.mktemp("data")
    for fake in FAKES.values():
        fake.write(root)
    return root


@pytest.mark.parametrize("name", NAMES)
def test_classes_splits_labels(name, fakes):
    fake, task = FAKES[name], load(name, fakes)
    assert len(task.classes) == fake.classes and len(set(task.classes)) == fake.classes
    assert {s: len(task.splits[s]) for s in ("train", "val", "test")} == fake.sizes
    items = {s: set(task.splits[s].items) for s in task.splits}
    assert not (items["train"] & items["val"] or items["train"] & items["test"] or items["val"] & items["test"])
    for split in task.splits.values():
        assert pickle.loads(pickle.dumps(split))[0][1] == split.labels[0]  # DataLoader workers get a copy
        assert set(split.labels) == set(range(fake.classes))  # every class in every split, labels 0-based
        for i in range(len(split)):  # grayscale, PNG-named-.jpg and pickled images all come out RGB
            image, label = split[i]
            assert image.mode == "RGB" and label == split.labels[i]


@pytest.mark.parametrize("name", NAMES)
def test_metric_is_the_datasets_own(name):
    assert spec(name)["name"] == name
    assert spec(name)["metric"] == ("mean_per_class" if name in MEAN_PER_CLASS else "top1")


@pytest.mark.parametrize("name", NAMES)
def test_strict_load_checks_the_official_sizes(name, fakes, monkeypatch):
    with pytest.raises(UserError, match=f"dataset {name} at .* does not have its official size: expected"):
        load(name, fakes, strict=True)  # the real sizes: a small copy is caught
    monkeypatch.setitem(module(name).EXPECTED, name, FAKES[name].official)
    assert {s: len(v) for s, v in load(name, fakes, strict=True).splits.items()} == FAKES[name].sizes


@pytest.mark.parametrize("name", NAMES)
def test_truncated_copy_fails_loudly(name, tmp_path, monkeypatch):
    FAKES[name].write(tmp_path)
    FAKES[name].truncate(tmp_path)
    monkeypatch.setitem(module(name).EXPECTED, name, FAKES[name].official)
    with pytest.raises(UserError, match=r"truncated|missing|official size") as err:
        load(name, tmp_path, strict=True)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_absent_dataset_says_where_and_how(name, tmp_path):
    with pytest.raises(UserError, match=f"expected the folder {tmp_path}/.*seabench data get {name}"):
        load(name, tmp_path)


FINGERPRINTS = """
import json, sys
sys.path.insert(0, sys.argv[2])
from test_datasets import NAMES, load
from pathlib import Path
print(json.dumps({n: {s: v.fingerprint() for s, v in load(n, Path(sys.argv[1])).splits.items()} for n in NAMES}))
"""


def test_splits_are_the_same_in_another_process(fakes):
    here = {n: {s: v.fingerprint() for s, v in load(n, fakes).splits.items()} for n in NAMES}
    out = subprocess.run([sys.executable, "-c", FINGERPRINTS, str(fakes), str(Path(__file__).parent)],
                         capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"})
    assert json.loads(out.stdout) == here


def test_split_does_not_depend_on_listing_order_but_on_the_seed(tmp_path):
    FAKES["mit67"].write(tmp_path)
    before = load("mit67", tmp_path)
    listing = tmp_path / "mit67" / "TrainImages.txt"
    listing.write_text("\r\n".join(reversed(listing.read_text().splitlines())))  # other order, Windows line ends
    after = load("mit67", tmp_path)
    assert all(set(before.splits[s].items) == set(after.splits[s].items) for s in before.splits)
    other_seed = module("mit67").load(root=tmp_path, **{**FAKES["mit67"].options, "seed": 1}, strict=False)
    assert set(other_seed.splits["val"].items) != set(before.splits["val"].items)


def test_partition_choice_changes_dtd_splits(fakes):
    first = module("dtd").load(root=fakes, partition=1, strict=False)
    second = module("dtd").load(root=fakes, partition=2, strict=False)
    assert set(first.splits["train"].items) == set(second.splits["test"].items)
    with pytest.raises(UserError, match="partitions 1..10"):
        module("dtd").load(root=fakes, partition=11)


def test_cars_test_labels_must_come_from_the_labelled_file(tmp_path):
    from scipy.io import savemat

    FAKES["cars"].write(tmp_path)
    path = tmp_path / "stanford_cars" / "cars_test_annos_withlabels.mat"
    import numpy as np
    record = np.zeros((1, 1), dtype=[("fname", "O")])
    record[0, 0] = ("00001.jpg",)
    savemat(path, {"annotations": record})  # the unlabelled cars_test_annos.mat put in its place
    with pytest.raises(UserError, match="no class labels"):
        load("cars", tmp_path)


@pytest.mark.parametrize("name", [*NAMES, "folder"])
def test_config_composes_and_its_keys_are_the_loaders_arguments(name):
    import inspect

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset={name}"])
    assert cfg.dataset.name == (None if name == "folder" else name)  # a folder is named after its folder
    assert cfg.dataset.metric in ("top1", "mean_per_class")
    options = {k: v for k, v in cfg.dataset.load.items() if k != "_target_"}
    module_name, function = cfg.dataset.load._target_.rsplit(".", 1)
    inspect.signature(getattr(importlib.import_module(module_name), function)).bind(root=REPO, **options)


def test_cars_test_annotations_may_sit_in_devkit(tmp_path):
    FAKES["cars"].write(tmp_path)
    base = tmp_path / "stanford_cars"
    before = load("cars", tmp_path)
    (base / "cars_test_annos_withlabels.mat").rename(base / "devkit" / "cars_test_annos_withlabels.mat")
    after = load("cars", tmp_path)
    assert after.splits["test"].fingerprint() == before.splits["test"].fingerprint()
    (base / "devkit" / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(UserError, match="missing .*stanford_cars/cars_test_annos_withlabels.mat"):
        load("cars", tmp_path)
