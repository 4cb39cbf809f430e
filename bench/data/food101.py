"""Food-101 (Bossard et al., ECCV 2014) in torchvision's layout.

    <root>/food-101/images/<class>/<id>.jpg
    <root>/food-101/meta/{train,test}.json   {class: ["<class>/<id>", ...]}

750 train and 250 test images per class. Val: `val_per_class` (75) per class carved from the
official train list with the seeded rule -> 68,175 / 7,575 / 25,250.
"""

from __future__ import annotations

import json

from bench import UserError
from bench.data import augself, checks
from bench.data.download import Resource

FOLDERS = {"food101": "food-101"}
EXPECTED = {"food101": {"classes": 101, "train": 75_750, "test": 25_250}}  # the paper; torchvision's docs
RESOURCES = {"food101": (Resource("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                                  digest="md5:85eeb15f3717b99a5da872d97d918f87", source="torchvision"),)}


def parse(path) -> dict[str, list[str]]:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise UserError(f"cannot parse {path} (truncated download?): {err}") from None


def read_list(path, classes: list[str]) -> tuple[list[str], list[int]]:
    listing = parse(path)
    if sorted(listing) != classes:
        raise UserError(f"{path} lists other classes than meta/train.json")
    items = [f"images/{entry}.jpg" for c in classes for entry in listing[c]]
    return items, [k for k, c in enumerate(classes) for _ in listing[c]]


def load(*, root, val_per_class: int, seed: int, strict: bool = True, split: str = "canonical"):
    """`split="augself"`: AugSelf's random_split of the official train list (bench.data.augself)."""
    augself.check(split)
    base = checks.folder(root, FOLDERS["food101"], "food101")
    train_file, test_file = checks.need(base, ["meta/train.json", "meta/test.json"], "food101")
    classes = sorted(parse(train_file))  # torchvision's class order
    train, test = read_list(train_file, classes), read_list(test_file, classes)
    found = {"classes": len(classes), "train": len(train[0]), "test": len(test[0])}
    checks.counts("food101", base, found, EXPECTED["food101"] if strict else None)
    for (items, _), path in ((train, train_file), (test, test_file)):
        checks.images_present(base, items, "food101", str(path))
    if split == "augself":  # AugSelf's order: classes as meta/classes.txt lists them, then train.json's order
        (classes_file,) = checks.need(base, ["meta/classes.txt"], "food101")
        if checks.lines(classes_file) != classes:
            raise UserError(f"{classes_file} lists other classes (or another order) than meta/train.json")
        return augself.task("food101", base, classes, train, test, strict=strict)
    return checks.carve_val("food101", base, classes, train, test, seed=seed, per_class=val_per_class)
