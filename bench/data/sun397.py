"""SUN397 (Xiao et al., CVPR 2010), partition `partition` (01), torchvision's image layout + the official
partition files, which torchvision does not read.

    <root>/SUN397/ClassName.txt                      lines "/a/abbey" (397)
    <root>/SUN397/a/abbey/sun_<id>.jpg ...
    <root>/SUN397/Partitions/Training_01.txt         lines "/a/abbey/sun_<id>.jpg", 50 per class
    <root>/SUN397/Partitions/Testing_01.txt          50 per class

(the partition files are also found directly in <root>/SUN397/). Val: `val_per_class` (10) per class
carved from Training_01 with the seeded rule -> 15,880 / 3,970 / 19,850. Some files named .jpg are not
JPEGs; `bench.data.read_rgb` identifies the format by content.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import UserError
from bench.data import augself, checks
from bench.data.download import Resource

FOLDERS = {"sun397": "SUN397"}
EXPECTED = {"sun397": {"classes": 397, "train": 19_850, "test": 19_850}}  # 50 + 50 per class (the paper)
RESOURCES = {"sun397": (
    Resource("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",  # md5 from torchvision.datasets.SUN397
             digest="md5:8ca2778205c41d23104230ba66911c7a", source="torchvision"),
    # sha256 from torchvision's prototype datasets (torchvision/prototype/datasets/_builtin/sun397.py)
    Resource("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip", into="SUN397/Partitions",
             digest="sha256:e3311ea5f812d4cc6faef194688343d1111f6cd6f70f2c62f393c2b8d6ba1ec9",
             source="torchvision prototype datasets"),
)}


def arrange(folder: Path) -> None:
    """After unpacking: put the partition files directly in SUN397/Partitions/, whatever the zip's folders."""
    target = folder / "Partitions"
    for path in list(target.rglob("*.txt")):
        if path.parent != target:
            os.replace(path, target / path.name)


def partition_file(base: Path, name: str) -> Path:
    for candidate in (base / "Partitions" / name, base / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"dataset sun397 is incomplete: missing {base / 'Partitions' / name} (from Partitions.zip); "
                    f"{checks.how_to_get('sun397')}")


def read_list(path: Path, index: dict[str, int]) -> tuple[list[str], list[int]]:
    items, labels = [], []
    for line in checks.lines(path):
        item = line.lstrip("/")                 # "a/abbey/sun_x.jpg"
        name = item.split("/", 1)[-1].rsplit("/", 1)[0]  # "abbey", "bakery/shop"
        if name not in index:
            raise UserError(f"{path}: class {name!r} of {line} is not in ClassName.txt")
        items.append(item)
        labels.append(index[name])
    return items, labels


def load(*, root, partition: int, val_per_class: int, seed: int, strict: bool = True, split: str = "canonical"):
    """`split="augself"`: AugSelf's fixed indices into Training_01.txt's rows (bench.data.augself)."""
    augself.check(split)
    if split == "augself" and partition != 1:
        raise UserError(f"AugSelf's SUN397 split is of partition 1, not {partition}")
    if not 1 <= partition <= 10:
        raise UserError(f"SUN397 has partitions 1..10, not {partition}")
    base = checks.folder(root, FOLDERS["sun397"], "sun397")
    (names_file,) = checks.need(base, ["ClassName.txt"], "sun397")
    classes = [c.lstrip("/").split("/", 1)[-1] for c in checks.lines(names_file)]  # "/a/abbey" -> "abbey"
    index = {c: k for k, c in enumerate(classes)}
    train_file = partition_file(base, f"Training_{partition:02d}.txt")
    test_file = partition_file(base, f"Testing_{partition:02d}.txt")
    train, test = read_list(train_file, index), read_list(test_file, index)
    found = {"classes": len(classes), "train": len(train[0]), "test": len(test[0])}
    checks.counts("sun397", base, found, EXPECTED["sun397"] if strict else None)
    checks.images_present(base, train[0], "sun397", str(train_file))
    checks.images_present(base, test[0], "sun397", str(test_file))
    if split == "augself":
        return augself.task("sun397", base, classes, train, test, strict=strict)
    return checks.carve_val("sun397", base, classes, train, test, seed=seed, per_class=val_per_class)
