"""MIT Indoor 67 (Quattoni & Torralba, CVPR 2009), official files; torchvision has no class for it.

    <root>/mit67/Images/<class>/<file>.jpg      (indoorCVPR_09.tar unpacked)
    <root>/mit67/TrainImages.txt                 lines "<class>/<file>.jpg", 80 per class
    <root>/mit67/TestImages.txt                  20 per class

Val: `val_per_class` (10) per class carved from TrainImages.txt with the seeded rule -> 4,690 / 670 / 1,340.
"""

from __future__ import annotations

from bench import UserError
from bench.data import augself, checks
from bench.data.download import Resource

FOLDERS = {"mit67": "mit67"}
EXPECTED = {"mit67": {"classes": 67, "train": 5_360, "test": 1_340}}  # 80 + 20 per class (the paper)
# The tar's sha1 is the one the vipy library pins (visym/vipy, vipy/data/mit67.py); the two lists have no
# published checksum.
RESOURCES = {"mit67": (
    Resource("http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar", into="mit67",
             digest="sha1:0b252516e746ba428b96af408d2e8162d9b08ac5", source="vipy (visym/vipy)"),
    Resource("http://web.mit.edu/torralba/www/TrainImages.txt", into="mit67", extract=False),
    Resource("http://web.mit.edu/torralba/www/TestImages.txt", into="mit67", extract=False),
)}


def read_list(path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    # some copies of the lists have Windows line ends or backslashes; the class is the first path part
    entries = [s.replace("\\", "/") for s in checks.lines(path)]
    classes = classes or sorted({e.split("/")[0] for e in entries})
    index = {c: k for k, c in enumerate(classes)}
    unknown = [e for e in entries if e.split("/")[0] not in index]
    if unknown:
        raise UserError(f"{path} lists {len(unknown)} images of classes not in TrainImages.txt, e.g. {unknown[0]}")
    return [f"Images/{e}" for e in entries], [index[e.split("/")[0]] for e in entries], classes


def load(*, root, val_per_class: int, seed: int, strict: bool = True, split: str = "canonical"):
    """`split="augself"`: AugSelf's random_split of TrainImages.txt in ImageFolder's order (bench.data.augself)."""
    augself.check(split)
    base = checks.folder(root, FOLDERS["mit67"], "mit67")
    train_file, test_file = checks.need(base, ["TrainImages.txt", "TestImages.txt"], "mit67")
    train_items, train_labels, classes = read_list(train_file)
    test_items, test_labels, _ = read_list(test_file, classes)
    found = {"classes": len(classes), "train": len(train_items), "test": len(test_items)}
    checks.counts("mit67", base, found, EXPECTED["mit67"] if strict else None)
    checks.images_present(base, train_items, "mit67", str(train_file))
    checks.images_present(base, test_items, "mit67", str(test_file))
    if split == "augself":  # torchvision ImageFolder over train/<class>/<file>: classes sorted, files sorted
        order = sorted(range(len(train_items)), key=lambda i: tuple(train_items[i].split("/")[1:]))
        trainval = ([train_items[i] for i in order], [train_labels[i] for i in order])
        return augself.task("mit67", base, classes, trainval, (test_items, test_labels), strict=strict)
    return checks.carve_val("mit67", base, classes, (train_items, train_labels), (test_items, test_labels),
                            seed=seed, per_class=val_per_class)
