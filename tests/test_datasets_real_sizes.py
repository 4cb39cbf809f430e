"""At the real sizes, the loaders pass their strict checks and give DESIGN section 4's split sizes.

The copies here have the official list files at full length (real class and image counts, invented
names) but no images: the check that every listed image exists (tested on the small fakes) is replaced by
a count of what it is asked to check, so no 100,000 files are written. Caltech-101, which lists its
folders, gets empty files; CIFAR gets full-size pickles of blank images. Cars is left out: its val size
depends on per-class counts we do not have.
"""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_datasets import write_lines

from bench.data import checks

REPO = Path(__file__).resolve().parents[1]
DESIGN = {  # DESIGN.md section 4: train / val / test
    "cifar10": (45_000, 5_000, 10_000), "cifar100": (45_000, 5_000, 10_000), "food101": (68_175, 7_575, 25_250),
    "mit67": (4_690, 670, 1_340), "pets": (2_940, 740, 3_669), "flowers102": (1_020, 1_020, 6_149),
    "caltech101": (2_525, 505, 5_647), "aircraft": (3_334, 3_333, 3_333), "dtd": (1_880, 1_880, 1_880),
    "sun397": (15_880, 3_970, 19_850),
}


def touch(base: Path, relatives) -> None:
    for r in relatives:
        path = base / r
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def spread(total: int, parts: int) -> list[int]:
    """`parts` class sizes as equal as possible, summing to `total`."""
    return [total // parts + (k < total % parts) for k in range(parts)]


def cifar(variant: str, folder: str, classes: int):
    def write(root: Path) -> None:
        key, names = ("labels", "label_names") if variant == "cifar10" else ("fine_labels", "fine_label_names")
        blank = lambda n: {"data": np.zeros((n, 3072), np.uint8), key: [i % classes for i in range(n)]}
        files = ({f"data_batch_{i}": blank(10_000) for i in range(1, 6)} | {"test_batch": blank(10_000)}
                 if variant == "cifar10" else {"train": blank(50_000), "test": blank(10_000)})
        files["batches.meta" if variant == "cifar10" else "meta"] = {names: [f"c{k}" for k in range(classes)]}
        (root / folder).mkdir()
        for name, content in files.items():
            (root / folder / name).write_bytes(pickle.dumps(content))
    return write


def food101(root: Path) -> None:
    base = root / "food-101"
    for split, rng in (("train", range(750)), ("test", range(750, 1000))):
        listing = {f"dish{c:03d}": [f"dish{c:03d}/{i}" for i in rng] for c in range(101)}
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(listing))


def mit67(root: Path) -> None:
    rows = {f: [f"class{c:02d}/img{c:02d}_{i:03d}.jpg" for c in range(67) for i in rng] for f, rng in
            (("TrainImages.txt", range(80)), ("TestImages.txt", range(80, 100)))}
    for f, lines in rows.items():
        write_lines(root / "mit67" / f, lines)


def pets(root: Path) -> None:
    for split, total, offset in (("trainval", 3_680, 0), ("test", 3_669, 500)):
        lines = [f"breed_{c:02d}_{offset + i} {c + 1} 1 {c + 1}" for c, n in enumerate(spread(total, 37))
                 for i in range(n)]
        write_lines(root / "oxford-iiit-pet" / "annotations" / f"{split}.txt", lines)


def flowers102(root: Path) -> None:
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = np.concatenate([[c + 1] * n for c, n in enumerate(spread(8_189, 102))])
    ids = {c: list(np.flatnonzero(labels == c + 1) + 1) for c in range(102)}
    base.mkdir(parents=True)
    savemat(base / "imagelabels.mat", {"labels": labels[None, :]})
    sets = {"trnid": [i for c in ids for i in ids[c][:10]], "valid": [i for c in ids for i in ids[c][10:20]]}
    sets["tstid"] = sorted(set(range(1, 8_190)) - set(sets["trnid"]) - set(sets["valid"]))
    savemat(base / "setid.mat", {k: np.array(v)[None, :] for k, v in sets.items()})


def caltech101(root: Path) -> None:
    base = root / "caltech101" / "101_ObjectCategories"
    touch(base, [f"c{c:03d}/image_{i:04d}.jpg" for c, n in enumerate(spread(8_677, 101)) for i in range(1, n + 1)])
    touch(base, [f"BACKGROUND_Google/image_{i:04d}.jpg" for i in range(1, 468)])


def aircraft(root: Path) -> None:
    base = root / "fgvc-aircraft-2013b" / "data"
    write_lines(base / "variants.txt", [f"Model {v}-{v}" for v in range(100)])
    start = 0
    for split, total in (("train", 3_334), ("val", 3_333), ("test", 3_333)):
        lines = [f"{start + k:07d} Model {k % 100}-{k % 100}" for k in range(total)]
        start += total
        write_lines(base / f"images_variant_{split}.txt", lines)


def dtd(root: Path) -> None:
    base = root / "dtd" / "dtd"
    for j, split in enumerate(("train", "val", "test")):
        lines = [f"t{c:02d}/t{c:02d}_{40 * j + i:04d}.jpg" for c in range(47) for i in range(40)]
        write_lines(base / "labels" / f"{split}1.txt", lines)


def sun397(root: Path) -> None:
    base = root / "SUN397"
    classes = [f"/{chr(97 + c % 26)}/scene{c:03d}" + ("/indoor" if c % 5 == 0 else "") for c in range(397)]
    write_lines(base / "ClassName.txt", classes)
    for name, rng in (("Training_01", range(50)), ("Testing_01", range(50, 100))):
        lines = [f"{c}/sun_{i:04d}.jpg" for c in classes for i in rng]
        write_lines(base / "Partitions" / f"{name}.txt", lines)


WRITERS = {"cifar10": cifar("cifar10", "cifar-10-batches-py", 10),
           "cifar100": cifar("cifar100", "cifar-100-python", 100), "food101": food101, "mit67": mit67, "pets": pets, "flowers102": flowers102, "caltech101": caltech101,
           "aircraft": aircraft, "dtd": dtd, "sun397": sun397}


@pytest.mark.parametrize("name", list(DESIGN))
def test_real_sizes_pass_strict_checks_and_give_the_design_splits(name, tmp_path, monkeypatch):
    WRITERS[name](tmp_path)
    checked = []
    monkeypatch.setattr(checks, "images_present", lambda base, items, *_: checked.extend(items))
    load = yaml.safe_load((REPO / "conf" / "dataset" / f"{name}.yaml").read_text())["load"]  # the options a run uses
    module = importlib.import_module(load.pop("_target_").rsplit(".", 1)[0])
    assert load["strict"] is True
    task = module.load(root=tmp_path, **load)
    assert tuple(len(task.splits[s]) for s in ("train", "val", "test")) == DESIGN[name]
    assert len(task.classes) == module.EXPECTED[name]["classes"]
    listed = {i for split in task.splits.values() for i in split.items}
    assert name in ("cifar10", "cifar100", "caltech101") or set(checked) == listed
