"""Describable Textures (Cimpoi et al., CVPR 2014), partition `partition` (1), torchvision's layout.

    <root>/dtd/dtd/images/<class>/<class>_<n>.jpg
    <root>/dtd/dtd/labels/{train,val,test}<partition>.txt   lines "<class>/<file>.jpg"

Splits as published: 40 images per class each, 1,880 / 1,880 / 1,880 over 47 classes. Metric: top-1.
"""

from __future__ import annotations

from bench import UserError
from bench.data import checks
from bench.data.download import Resource

FOLDERS = {"dtd": "dtd"}
EXPECTED = {"dtd": {"classes": 47, "train": 1_880, "val": 1_880, "test": 1_880}}  # the dataset page
RESOURCES = {"dtd": (Resource("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", into="dtd",
                              digest="md5:fff73e5086ae6bdbea199a49dfb8a4c1", source="torchvision"),)}
SPLITS = ("train", "val", "test")


def load(*, root, partition: int, strict: bool = True):
    if not 1 <= partition <= 10:
        raise UserError(f"DTD has partitions 1..10, not {partition}")
    base = checks.folder(root, FOLDERS["dtd"], "dtd")
    files = checks.need(base, [f"dtd/labels/{s}{partition}.txt" for s in SPLITS], "dtd")
    entries = {s: checks.lines(f) for s, f in zip(SPLITS, files)}
    classes = sorted({e.split("/")[0] for es in entries.values() for e in es})  # torchvision's order
    index = {c: k for k, c in enumerate(classes)}
    parts = {s: ([f"dtd/images/{e}" for e in es], [index[e.split("/")[0]] for e in es]) for s, es in entries.items()}
    found = {"classes": len(classes), **{s: len(es) for s, es in entries.items()}}
    checks.counts("dtd", base, found, EXPECTED["dtd"] if strict else None)
    for (items, _), path in zip(parts.values(), files):
        checks.images_present(base, items, "dtd", str(path))
    return checks.task("dtd", classes, base, parts)
