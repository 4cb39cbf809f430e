"""Oxford Flowers-102 (Nilsback & Zisserman, ICVGIP 2008) in torchvision's layout, official splits.

    <root>/flowers-102/jpg/image_00001.jpg ... image_08189.jpg
    <root>/flowers-102/imagelabels.mat   "labels": class 1..102 of image i (1-based)
    <root>/flowers-102/setid.mat         "trnid", "valid", "tstid": 1-based image numbers

Splits as published: 1,020 / 1,020 / 6,149. Metric: mean per-class accuracy.
"""

from __future__ import annotations

import numpy as np

from bench import UserError
from bench.data import checks
from bench.data.download import Resource

FOLDERS = {"flowers102": "flowers-102"}
EXPECTED = {"flowers102": {"classes": 102, "train": 1_020, "val": 1_020, "test": 6_149}}  # the dataset page
URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
RESOURCES = {"flowers102": (  # md5s as published by torchvision.datasets.Flowers102
    Resource(URL + "102flowers.tgz", into="flowers-102", digest="md5:52808999861908f626f3c1f4e79d11fa",
             source="torchvision"),
    Resource(URL + "imagelabels.mat", into="flowers-102", digest="md5:e0620be6f572b9609742df49c70aed4d",
             source="torchvision", extract=False),
    Resource(URL + "setid.mat", into="flowers-102", digest="md5:a5357ecc9cb78c4bef273ce3793fc85c",
             source="torchvision", extract=False),
)}
SET_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}


def as_ints(values) -> np.ndarray:
    return np.asarray(values).reshape(-1).astype(np.int64)


def class_names(count: int) -> list[str]:
    """torchvision's names when they match the class count, else the 1-based numbers of the label file."""
    from torchvision.datasets import Flowers102

    names = list(getattr(Flowers102, "classes", []))
    return names if len(names) == count else [str(k + 1) for k in range(count)]


def load(*, root, strict: bool = True):
    base = checks.folder(root, FOLDERS["flowers102"], "flowers102")
    labels_file, setid_file = checks.need(base, ["imagelabels.mat", "setid.mat"], "flowers102")
    labels = as_ints(checks.mat(labels_file, ["labels"])["labels"]) - 1  # the file counts from 1
    sets = {k: as_ints(v) for k, v in checks.mat(setid_file, list(SET_KEYS.values())).items()}
    classes = class_names(int(labels.max()) + 1)
    found = {"classes": len(classes), **{s: len(sets[k]) for s, k in SET_KEYS.items()}}
    checks.counts("flowers102", base, found, EXPECTED["flowers102"] if strict else None)
    parts = {}
    for split, key in SET_KEYS.items():
        ids = sets[key]
        if ids.min() < 1 or ids.max() > len(labels):
            raise UserError(f"{setid_file}: {key} holds image numbers outside 1..{len(labels)}")
        items = [f"jpg/image_{i:05d}.jpg" for i in ids]
        checks.images_present(base, items, "flowers102", str(setid_file))
        parts[split] = (items, [int(labels[i - 1]) for i in ids])
    return checks.task("flowers102", classes, base, parts)
