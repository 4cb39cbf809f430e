"""Oxford-IIIT Pets (Parkhi et al., CVPR 2012) in torchvision's layout.

    <root>/oxford-iiit-pet/images/<Breed_name>_<n>.jpg
    <root>/oxford-iiit-pet/annotations/{trainval,test}.txt   lines "<image id> <class 1..37> <species> <breed>"

Class ids in the files are 1-based. Val: `val_per_class` (20) per class carved from trainval with the
seeded rule -> 2,940 / 740 / 3,669. Metric: mean per-class accuracy.
"""

from __future__ import annotations

from bench import UserError
from bench.data import augself, checks
from bench.data.download import Resource

FOLDERS = {"pets": "oxford-iiit-pet"}
EXPECTED = {"pets": {"classes": 37, "trainval": 3_680, "test": 3_669}}  # the dataset's README
RESOURCES = {"pets": tuple(
    Resource(f"https://www.robots.ox.ac.uk/~vgg/data/pets/data/{name}", into="oxford-iiit-pet",
             digest=f"md5:{md5}", source="torchvision")
    for name, md5 in (("images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
                      ("annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f")))}


def read_list(path) -> tuple[list[str], list[int]]:
    ids, labels = [], []
    for line in checks.lines(path):
        fields = line.split()
        if len(fields) != 4 or not fields[1].isdigit():
            raise UserError(f"{path}: expected lines '<image id> <class> <species> <breed>', found {line!r}")
        ids.append(fields[0])
        labels.append(int(fields[1]) - 1)  # the file counts from 1
    return ids, labels


def class_names(ids: list[str], labels: list[int]) -> list[str]:
    """torchvision's names: the image id without its number, title-cased ("american_bulldog" -> "American Bulldog")."""
    names = dict(sorted({(t, i.rsplit("_", 1)[0]) for i, t in zip(ids, labels)}))
    return [" ".join(p.title() for p in names[t].split("_")) for t in sorted(names)]


def load(*, root, val_per_class: int, seed: int, strict: bool = True, split: str = "canonical"):
    """`split="augself"`: AugSelf's random_split of trainval.txt in file order (bench.data.augself)."""
    augself.check(split)
    base = checks.folder(root, FOLDERS["pets"], "pets")
    trainval_file, test_file = checks.need(base, ["annotations/trainval.txt", "annotations/test.txt"], "pets")
    trainval, test = read_list(trainval_file), read_list(test_file)
    classes = class_names(*trainval)
    found = {"classes": len(classes), "trainval": len(trainval[0]), "test": len(test[0])}
    checks.counts("pets", base, found, EXPECTED["pets"] if strict else None)
    as_items = lambda ids: [f"images/{i}.jpg" for i in ids]
    checks.images_present(base, as_items(trainval[0]), "pets", str(trainval_file))
    checks.images_present(base, as_items(test[0]), "pets", str(test_file))
    if split == "augself":
        return augself.task("pets", base, classes, (as_items(trainval[0]), trainval[1]),
                            (as_items(test[0]), test[1]), strict=strict)
    return checks.carve_val("pets", base, classes, (as_items(trainval[0]), trainval[1]),
                            (as_items(test[0]), test[1]), seed=seed, per_class=val_per_class)
