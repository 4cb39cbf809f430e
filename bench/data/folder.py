"""Bring your own task: an ImageFolder tree.

    <path>/train/<class>/<image>    required
    <path>/test/<class>/<image>     required
    <path>/val/<class>/<image>      optional; else val is carved from train per class with the seeded rule
                                    (`val_per_class` images, or `val_fraction` of each class)

Classes are the sub-folders of train/, sorted; val/ and test/ may only use those. Items are paths
relative to <path>, so the split fingerprint does not depend on where the tree lives.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import UserError
from bench.data import checks

# what torchvision.datasets.folder.IMG_EXTENSIONS accepts
SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan(base: Path, split: str, classes: list[str]) -> tuple[list[str], list[int]]:
    index = {c: k for k, c in enumerate(classes)}
    folders = sorted(d.name for d in (base / split).iterdir() if d.is_dir())
    unknown = [c for c in folders if c not in index]
    if unknown:
        raise UserError(f"{base / split} has classes that train/ lacks: {', '.join(unknown)}")
    items, labels = [], []
    for c in folders:
        files = sorted(f for f in os.listdir(base / split / c) if f.lower().endswith(SUFFIXES))
        items += [f"{split}/{c}/{f}" for f in files]
        labels += [index[c]] * len(files)
    if not items:
        raise UserError(f"{base / split} holds no images (expected {split}/<class>/<image>, suffixes {SUFFIXES})")
    return items, labels


def load(*, root, path: str | None, name: str = "folder", val_per_class: int | None = None,
         val_fraction: float | None = None, seed: int = 0):
    if not path:
        raise UserError("dataset=folder needs dataset.load.path=<folder with train/ and test/ sub-folders>")
    base = Path(path).expanduser()
    missing = [s for s in ("train", "test") if not (base / s).is_dir()]
    if missing:
        raise UserError(f"dataset folder {base} lacks the sub-folder(s) {', '.join(missing)}/ "
                        f"(expected train/<class>/<image> and test/<class>/<image>, optionally val/)")
    classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
    train, test = scan(base, "train", classes), scan(base, "test", classes)
    if (base / "val").is_dir():
        return checks.task(name, classes, base, {"train": train, "val": scan(base, "val", classes), "test": test})
    if (val_per_class is None) == (val_fraction is None):
        raise UserError(f"{base} has no val/: set exactly one of dataset.load.val_per_class and "
                        f"dataset.load.val_fraction to carve it from train/")
    return checks.carve_val(name, base, classes, train, test, seed=seed, per_class=val_per_class,
                            fraction=val_fraction)
