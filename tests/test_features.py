"""The feature cache: one extraction per entry, a hit on the second run, a miss when preprocessing changes."""

import contextlib
import pathlib

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


def test_a_full_disk_is_one_sentence_and_leaves_no_entry(tmp_path, task, monkeypatch):
    """torch.save into a file that runs out of space (/dev/full): torch's own 29-line error said nothing of it."""
    real_open = open
    monkeypatch.setattr(features, "open", lambda path, mode: real_open("/dev/full", mode), raising=False)
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


def test_a_changed_byte_is_found_by_the_checksum_and_healed(tmp_path, task, caplog):
    """One flipped training label was a silent cache hit (another penalty chosen, test 92.40 vs 95.40)."""
    X, y, info = get(backbone(tmp_path), task, tmp_path)
    entry = torch.load(info["path"], weights_only=True)
    entry["labels"][0] = (entry["labels"][0] + 1) % 10  # the stored checksum now disagrees
    torch.save(entry, info["path"])
    X2, y2, info2 = get(backbone(tmp_path), task, tmp_path)
    assert not info2["hit"] and torch.equal(y2, y) and torch.equal(X2, X)
    assert "damaged (its tensors do not match their checksum): removed, extracting again" in caplog.text
    assert get(backbone(tmp_path), task, tmp_path)[2]["hit"]  # healed: the next run hits


def test_nan_in_a_cached_entry_is_damage_not_the_backbones_fault(tmp_path, task, caplog):
    X, _, info = get(backbone(tmp_path), task, tmp_path)
    entry = torch.load(info["path"], weights_only=True)
    entry["features"][3, 5] = float("nan")
    entry["checksum"] = features.checksum(entry["features"], entry["labels"])  # bytes changed before the sum
    torch.save(entry, info["path"])
    X2, _, info2 = get(backbone(tmp_path), task, tmp_path)
    assert not info2["hit"] and torch.equal(X2, X) and "it holds NaN or infinite features" in caplog.text


def test_a_flipped_byte_in_the_file_is_healed(tmp_path, task):
    X, y, info = get(backbone(tmp_path), task, tmp_path)
    path = pathlib.Path(info["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    X2, y2, info2 = get(backbone(tmp_path), task, tmp_path)
    assert not info2["hit"] and torch.equal(X2, X) and torch.equal(y2, y)


def test_an_entry_without_a_checksum_is_extracted_again(tmp_path, task, caplog):
    _, _, info = get(backbone(tmp_path), task, tmp_path)
    entry = torch.load(info["path"], weights_only=True)
    del entry["checksum"]
    torch.save(entry, info["path"])
    assert not get(backbone(tmp_path), task, tmp_path)[2]["hit"]
    assert "it has no checksum (written by an older seabench)" in caplog.text


def test_a_damaged_entry_is_removed_under_the_lock(tmp_path, task, monkeypatch):
    _, _, info = get(backbone(tmp_path), task, tmp_path)
    with open(info["path"], "r+b") as f:
        f.truncate(10)
    held, removals = [False], []
    real_hold, real_unlink = features.hold, pathlib.Path.unlink

    @contextlib.contextmanager
    def watched(lock_path, **kwargs):
        with real_hold(lock_path, **kwargs):
            held[0] = True
            yield
            held[0] = False

    def unlink(self, *args, **kwargs):
        if str(self) == info["path"]:
            removals.append(held[0])
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(features, "hold", watched)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    get(backbone(tmp_path), task, tmp_path)
    assert removals == [True]


def test_nan_features_from_the_backbone_are_refused_and_not_cached(tmp_path, task, monkeypatch):
    monkeypatch.setattr(features, "extract", lambda *a, **k: torch.full((50, 96), float("nan")))
    with pytest.raises(UserError, match="backbone test_resnet gave NaN or infinite features on digits/val"):
        get(backbone(tmp_path), task, tmp_path)
    assert [p for p in (tmp_path / "features").rglob("*.pt")] == []
