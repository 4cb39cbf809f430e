"""Stanford Cars (Krause et al., 3dRR 2013) in torchvision's layout; no public download any more.

    <root>/stanford_cars/devkit/cars_meta.mat            "class_names" (196)
    <root>/stanford_cars/devkit/cars_train_annos.mat     "annotations": bbox_*, class (1-based), fname
    <root>/stanford_cars/cars_train/00001.jpg ...
    <root>/stanford_cars/cars_test_annos_withlabels.mat  the test annotations *with* their classes (many
                                                         copies keep it under devkit/: both places are read)
    <root>/stanford_cars/cars_test/00001.jpg ...

Val: `val_fraction` (20%) of each class carved from the official train set with the seeded rule
(about 6,515 / 1,629 / 8,041). Metric: top-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import UserError
from bench.data import checks

FOLDERS = {"cars": "stanford_cars"}
EXPECTED = {"cars": {"classes": 196, "train": 8_144, "test": 8_041}}  # the dataset page
RESOURCES = {"cars": ()}
MANUAL = {"cars": """\
Stanford Cars has no working official download (ai.stanford.edu/~jkrause/cars is gone; torchvision's
StanfordCars says so too). Get the original files from a copy you trust, e.g. the Kaggle dataset
"rickyyyyyyy/torchvision-stanford-cars" (the layout torchvision expects), or from your institution, and
put them here:
  {folder}/devkit/cars_meta.mat
  {folder}/devkit/cars_train_annos.mat
  {folder}/cars_train/00001.jpg ... 08144.jpg
  {folder}/cars_test/00001.jpg ... 08041.jpg
  {folder}/cars_test_annos_withlabels.mat   (or {folder}/devkit/cars_test_annos_withlabels.mat)
then run `seabench doctor` to check it (8,144 train and 8,041 test images, 196 classes)."""}


def annotations(path: Path, images: str) -> tuple[list[str], list[int]]:
    records = np.atleast_1d(checks.mat(path, ["annotations"])["annotations"])
    names = records.dtype.names or ()
    if "fname" not in names or "class" not in names:
        raise UserError(f"{path} has no class labels (fields {', '.join(names)}): use cars_test_annos_withlabels.mat")
    return [f"{images}/{r['fname']}" for r in records], [int(r["class"]) - 1 for r in records]  # 1-based


# torchvision's StanfordCars reads the labelled test file from the dataset's folder; many copies keep it in devkit/
TEST_ANNOTATIONS = ("cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")


def load(*, root, val_fraction: float, seed: int, strict: bool = True):
    base = checks.folder(root, FOLDERS["cars"], "cars")
    test_name = next((t for t in TEST_ANNOTATIONS if (base / t).is_file()), TEST_ANNOTATIONS[0])
    meta_file, train_file, test_file = checks.need(
        base, ["devkit/cars_meta.mat", "devkit/cars_train_annos.mat", test_name], "cars")
    classes = [str(c) for c in np.atleast_1d(checks.mat(meta_file, ["class_names"])["class_names"])]
    train, test = annotations(train_file, "cars_train"), annotations(test_file, "cars_test")
    found = {"classes": len(classes), "train": len(train[0]), "test": len(test[0])}
    checks.counts("cars", base, found, EXPECTED["cars"] if strict else None)
    checks.images_present(base, train[0], "cars", str(train_file))
    checks.images_present(base, test[0], "cars", str(test_file))
    return checks.carve_val("cars", base, classes, train, test, seed=seed, fraction=val_fraction)
