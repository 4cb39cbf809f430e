"""Bring your own task: an ImageFolder tree.

    <path>/train/<class>/<image>    required
    <path>/test/<class>/<image>     required
    <path>/val/<class>/<image>      optional; else val is carved from train per class with the seeded rule
                                    (`val_per_class` images, or `val_fraction` of each class), and logged

Classes are the sub-folders of train/, sorted; val/ and test/ may only use those. As torchvision's
ImageFolder, a class's images are found in its folder and all of its sub-folders. A class folder without
images is an error; files that are not images (by suffix) are skipped and named in a warning that also goes
into the run's record. Items are paths relative to <path>, so the split fingerprint does not depend on
where the tree lives. The task is named after the folder unless `name` is given.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bench import UserError
from bench.data import checks

log = logging.getLogger(__name__)

# what torchvision.datasets.folder.IMG_EXTENSIONS accepts
SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def class_files(base: Path, folder: str) -> tuple[list[str], list[str], list[str]]:
    """(images, other files, links skipped) under base/folder and its sub-folders, as sorted paths relative
    to `base`; hidden files (`.DS_Store` ...) are neither. Links to folders are followed, except one that
    leads back to a folder it is in (a loop, which would walk the tree again and again) or to a folder
    already walked."""
    images, others, loops, seen = [], [], [], set()
    for parent, subfolders, files in os.walk(base / folder, followlinks=True):
        here = os.path.realpath(parent)
        seen.add(here)
        for sub in list(subfolders):
            target = os.path.realpath(os.path.join(parent, sub))
            if target in seen or (here + os.sep).startswith(target + os.sep):
                subfolders.remove(sub)
                loops.append(Path(parent, sub).relative_to(base).as_posix())
        subfolders.sort()  # walk in a fixed order: the split's fingerprint depends on it
        relative = Path(parent).relative_to(base).as_posix()
        for f in sorted(f for f in files if not f.startswith(".")):
            (images if f.lower().endswith(SUFFIXES) else others).append(f"{relative}/{f}")
    return images, others, loops


def scan(base: Path, split: str, classes: list[str], warnings: list[str]) -> tuple[list[str], list[int]]:
    index = {c: k for k, c in enumerate(classes)}
    folders = sorted(d.name for d in (base / split).iterdir() if d.is_dir())
    unknown = [c for c in folders if c not in index]
    if unknown:
        raise UserError(f"{base / split} has classes that train/ lacks: {', '.join(unknown)}")
    items, labels, empty = [], [], []
    skipped = sorted(f"{split}/{f.name}" for f in (base / split).iterdir() if f.is_file() and not f.name.startswith("."))
    loops = []
    for c in folders:
        files, others, skipped_links = class_files(base, f"{split}/{c}")
        loops += skipped_links
        items += files
        labels += [index[c]] * len(files)
        skipped += others
        if not files:
            empty.append(c)
    if empty:
        raise UserError(f"{base / split} has class folders without images: {', '.join(empty)} "
                        f"(images are files with the suffixes {', '.join(SUFFIXES)}, in {split}/<class>/ or below)")
    if not items:
        raise UserError(f"{base / split} holds no images (expected {split}/<class>/<image>, suffixes {SUFFIXES})")
    if loops:
        warnings.append(f"{base}: {len(loops)} link(s) in {split}/ lead back to a folder already walked and are "
                        f"not followed: {', '.join(loops[:5])}" + (" ..." if len(loops) > 5 else ""))
        log.warning(warnings[-1])
    if skipped:
        warnings.append(f"{base}: {len(skipped)} file(s) in {split}/ are not in a class folder or not images "
                        f"(suffixes {', '.join(SUFFIXES)}) and are skipped: {', '.join(skipped[:5])}"
                        + (" ..." if len(skipped) > 5 else ""))
        log.warning(warnings[-1])
    return items, labels


def load(*, root, path: str | None, name: str | None = None, val_per_class: int | None = None,
         val_fraction: float | None = None, seed: int = 0):
    if not path:
        raise UserError("dataset=folder needs dataset.load.path=<folder with train/ and test/ sub-folders>")
    base = Path(path).expanduser()
    missing = [s for s in ("train", "test") if not (base / s).is_dir()]
    if missing:
        raise UserError(f"dataset folder {base} lacks the sub-folder(s) {', '.join(missing)}/ "
                        f"(expected train/<class>/<image> and test/<class>/<image>, optionally val/)")
    name = name or base.resolve().name
    classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
    warnings: list[str] = []
    train, test = scan(base, "train", classes, warnings), scan(base, "test", classes, warnings)
    if (base / "val").is_dir():
        task = checks.task(name, classes, base, {"train": train, "val": scan(base, "val", classes, warnings),
                                                 "test": test})
    else:
        if (val_per_class is None) == (val_fraction is None):
            raise UserError(f"{base} has no val/: set exactly one of dataset.load.val_per_class and "
                            f"dataset.load.val_fraction to carve it from train/")
        task = checks.carve_val(name, base, classes, train, test, seed=seed, per_class=val_per_class,
                                fraction=val_fraction)
        log.info("%s has no val/: carved %d of the %d train images as val (%s, seeded)", base,
                 len(task.splits["val"]), len(train[0]), f"{val_per_class} of each class" if val_per_class is not
                 None else f"{100 * val_fraction:g}% of each class, at least one")
    task.warnings = warnings
    return task
