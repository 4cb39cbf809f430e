"""FGVC Aircraft 2013b (Maji et al., 2013), variant level (100 classes), torchvision's layout, official splits.

    <root>/fgvc-aircraft-2013b/data/images/<id>.jpg
    <root>/fgvc-aircraft-2013b/data/variants.txt                       one class name a line
    <root>/fgvc-aircraft-2013b/data/images_variant_{train,val,test}.txt lines "<id> <variant name>"

Splits as published: 3,334 / 3,333 / 3,333. Images keep their 20-pixel copyright banner, as in
torchvision. Metric: mean per-class accuracy.
"""

from __future__ import annotations

from bench import UserError
from bench.data import checks
from bench.data.download import Resource

FOLDERS = {"aircraft": "fgvc-aircraft-2013b"}
EXPECTED = {"aircraft": {"classes": 100, "train": 3_334, "val": 3_333, "test": 3_333}}  # the dataset page
# neither the dataset page nor torchvision publishes a checksum of this archive
RESOURCES = {"aircraft": (
    Resource("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"),)}


def read_list(path, index: dict[str, int]) -> tuple[list[str], list[int]]:
    items, labels = [], []
    for line in checks.lines(path):
        image_id, _, variant = line.partition(" ")  # variant names contain spaces ("Cessna 172")
        if variant not in index:
            raise UserError(f"{path}: variant {variant!r} of image {image_id} is not in variants.txt")
        items.append(f"data/images/{image_id}.jpg")
        labels.append(index[variant])
    return items, labels


def load(*, root, strict: bool = True):
    base = checks.folder(root, FOLDERS["aircraft"], "aircraft")
    names = ["data/variants.txt"] + [f"data/images_variant_{s}.txt" for s in ("train", "val", "test")]
    variants_file, *split_files = checks.need(base, names, "aircraft")
    classes = checks.lines(variants_file)
    index = {c: k for k, c in enumerate(classes)}
    parts = {s: read_list(f, index) for s, f in zip(("train", "val", "test"), split_files)}
    found = {"classes": len(classes), **{s: len(items) for s, (items, _) in parts.items()}}
    checks.counts("aircraft", base, found, EXPECTED["aircraft"] if strict else None)
    for (items, _), path in zip(parts.values(), split_files):
        checks.images_present(base, items, "aircraft", str(path))
    return checks.task("aircraft", classes, base, parts)
