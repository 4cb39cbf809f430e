"""Caltech-101 (Fei-Fei et al., 2004) in torchvision's layout, without the BACKGROUND_Google clutter class.

    <root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg ...

There is no official split. Per class, seeded: `train_per_class` + `val_per_class` (25 + 5) images for
train and val, the rest for test -> 2,525 / 505 / 5,647 of the 8,677 images of the 101 classes.
Metric: mean per-class accuracy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench import UserError
from bench.data import augself, checks
from bench.data.download import Resource

FOLDERS = {"caltech101": "caltech101"}
EXCLUDED = "BACKGROUND_Google"  # not a class: clutter images (torchvision drops it too)
EXPECTED = {"caltech101": {"classes": 101, "images": 8_677}}  # 9,144 images minus 467 of BACKGROUND_Google
RESOURCES = {"caltech101": (
    # md5 as published by torchvision.datasets.Caltech101; the zip holds the two archives of the record
    Resource("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip", into="caltech101",
             digest="md5:3138e1922a9193bfa496528edbbc45d0", source="torchvision",
             inner=("caltech-101/101_ObjectCategories.tar.gz",)),
)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def arrange(folder: Path) -> None:
    """After unpacking: drop the zip's inner folder (its archives are unpacked, annotations are not used)."""
    shutil.rmtree(folder / "caltech-101", ignore_errors=True)


def listing(images: Path) -> tuple[list[str], list[str], list[int]]:
    classes = sorted(d.name for d in images.iterdir() if d.is_dir() and d.name != EXCLUDED)
    items, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(f for f in os.listdir(images / c) if f.lower().endswith(IMAGE_SUFFIXES))
        items += [f"101_ObjectCategories/{c}/{f}" for f in files]
        labels += [k] * len(files)
    return classes, items, labels


def load(*, root, train_per_class: int, val_per_class: int, seed: int, strict: bool = True,
         split: str = "canonical"):
    """`split="augself"`: AugSelf's fixed indices into torchvision's Caltech101 order (bench.data.augself)."""
    augself.check(split)
    base = checks.folder(root, FOLDERS["caltech101"], "caltech101")
    images = base / "101_ObjectCategories"
    if not images.is_dir():
        raise UserError(f"dataset caltech101 is incomplete: missing the folder {images}; "
                        f"{checks.how_to_get('caltech101')}")
    classes, items, labels = listing(images)
    found = {"classes": len(classes), "images": len(items)}
    checks.counts("caltech101", base, found, EXPECTED["caltech101"] if strict else None)
    if split == "augself":  # torchvision's order: classes sorted, then image_0001.jpg, image_0002.jpg, ...
        return augself.task("caltech101", base, classes, (items, labels), None, strict=strict)
    test, trainval = checks.split_off(items, labels, name="caltech101", seed=seed,
                                      per_class=train_per_class + val_per_class)
    train, val = checks.split_off([items[i] for i in trainval], [labels[i] for i in trainval],
                                  name="caltech101", seed=seed, per_class=val_per_class)
    pick = lambda idx: ([items[i] for i in idx], [labels[i] for i in idx])
    parts = {"train": pick([trainval[i] for i in train]), "val": pick([trainval[i] for i in val]),
             "test": pick(test)}
    return checks.task("caltech101", classes, base, parts)
