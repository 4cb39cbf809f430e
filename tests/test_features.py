"""The feature cache: one extraction per entry, a hit on the second run, a miss when preprocessing changes."""

import errno
import os

import pytest
import torch

from bench import UserError, backbones, features
from bench.data import digits

PRE = {"resize": 16, "crop": 16, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def task():
    return digits.load(test_per_class=5, val_per_class=5, seed=0)


def backbone(tmp_path, **pre):
    return backbones.create(name="test_resnet", arch="test_resnet", source="random", init_seed=0,
                            preprocess={**PRE, **pre}, cache_dir=tmp_path)


def get(bb, task, tmp_path):
    return features.cached(bb, "digits", "val", task.splits["val"], cache_dir=tmp_path, batch_size=16,
                           num_workers=0, device=torch.device("cpu"))


def test_second_run_hits_and_extracts_nothing(tmp_path, task, monkeypatch):
    X, y, info = get(backbone(tmp_path), task, tmp_path)
    assert not info["hit"] and X.shape == (50, 96) and y.tolist() == task.splits["val"].labels

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(features, "extract", no_extraction)
    X2, y2, info2 = get(backbone(tmp_path), task, tmp_path)
    assert info2["hit"] and info2["path"] == info["path"]
    assert torch.equal(X, X2) and torch.equal(y, y2)
    assert [p.name for p in (tmp_path / "features").rglob("*") if ".tmp" in p.name] == []


def test_changed_preprocessing_or_weights_misses(tmp_path, task):
    _, _, base = get(backbone(tmp_path), task, tmp_path)
    _, _, resized = get(backbone(tmp_path, resize=20, crop=20), task, tmp_path)
    _, _, renorm = get(backbone(tmp_path, mean=None, std=None), task, tmp_path)
    other = backbones.create(name="test_resnet", arch="test_resnet", source="random", init_seed=1,
                             preprocess=PRE, cache_dir=tmp_path)
    _, _, reinit = get(other, task, tmp_path)
    assert not any(i["hit"] for i in (resized, renorm, reinit))
    assert len({i["key"] for i in (base, resized, renorm, reinit)}) == 4


def test_a_failed_write_leaves_no_entry(tmp_path, task, monkeypatch):
    def broken_save(obj, f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(UserError, match="cannot write feature cache entry .*: No space left on device; free some"):
        get(backbone(tmp_path), task, tmp_path)
    left = [p.name for p in (tmp_path / "features").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == []  # neither the entry nor its temporary file


def test_features_match_a_direct_forward_pass(tmp_path, task):
    bb = backbone(tmp_path)
    X, _, _ = get(bb, task, tmp_path)
    images = torch.stack([bb.transform(task.splits["val"].read(i)) for i in task.splits["val"].items[:4]])
    with torch.inference_mode():
        torch.testing.assert_close(X[:4], bb.model(images), rtol=1e-5, atol=1e-5)


def test_a_damaged_entry_is_extracted_again(tmp_path, task):
    X, _, info = get(backbone(tmp_path), task, tmp_path)
    with open(info["path"], "r+b") as f:
        f.truncate(100)
    X2, _, info2 = get(backbone(tmp_path), task, tmp_path)
    assert not info2["hit"] and torch.equal(X, X2)


def test_the_same_file_names_in_another_folder_miss(tmp_path, task):
    bb = backbone(tmp_path)
    _, _, here = get(bb, task, tmp_path)
    moved = task.splits["val"]
    elsewhere = type(moved)(moved.items, moved.labels, moved.read, source="/another/folder")
    _, _, there = features.cached(bb, "digits", "val", elsewhere, cache_dir=tmp_path, batch_size=16,
                                  num_workers=0, device=torch.device("cpu"))
    assert not there["hit"] and there["key"] != here["key"]
