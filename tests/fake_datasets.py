"""Tiny fake copies of the 11 transfer datasets in their real on-disk layouts (file names, list files,
.mat files, 1-based labels, CIFAR pickles), for offline tests.

`FAKES[name]` says how to write one (`write(root)`), the loader options that fit its small size, the
class count and split sizes the loader must produce, its official list sizes (what `EXPECTED` holds for
the real data), and how to truncate it (`truncate(root)`, as a broken download would).
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, fmt: str = "JPEG", mode: str = "RGB", size: int = 8) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def put(path: Path, seed: int = 0, fmt: str = "JPEG", mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, fmt, mode))


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s}\n" for s in lines))


def drop_line(path: Path) -> None:
    write_lines(path, path.read_text().splitlines()[:-1])


@dataclass
class Fake:
    write: Callable[[Path], None]
    options: dict            # loader options for the fake's size (the YAML's, scaled down)
    classes: int
    sizes: dict              # split -> count the loader must return
    official: dict           # what the module's EXPECTED would hold for this copy
    truncate: Callable[[Path], None]
    overrides: list = field(default_factory=list)  # the same options as Hydra overrides


# ---- CIFAR: python pickles, 10 / 100 classes -------------------------------------------------------------
def cifar_writer(variant: str, classes: int, train_per_class: int, test_per_class: int):
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[variant]
    label_key = {"cifar10": "labels", "cifar100": "fine_labels"}[variant]

    def batch(n: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                label_key: [i % classes for i in range(n)], "filenames": [f"img_{seed}_{i}.png" for i in range(n)]}

    def write(root: Path) -> None:
        base = root / folder
        base.mkdir(parents=True)
        n_train, n_test = classes * train_per_class, classes * test_per_class
        if variant == "cifar10":  # five train batches of equal size
            files = {f"data_batch_{i}": batch(n_train // 5, i) for i in range(1, 6)}
            files |= {"test_batch": batch(n_test, 9),
                      "batches.meta": {"label_names": [f"class{k}" for k in range(classes)]}}
        else:
            files = {"train": batch(n_train, 1), "test": batch(n_test, 2),
                     "meta": {"fine_label_names": [f"class{k}" for k in range(classes)]}}
        for name, content in files.items():
            (base / name).write_bytes(pickle.dumps(content))

    def truncate(root: Path) -> None:
        path = root / folder / ("test_batch" if variant == "cifar10" else "test")
        path.write_bytes(path.read_bytes()[:1000])

    return write, truncate


# ---- list-file datasets ---------------------------------------------------------------------------------
def food101(root: Path) -> None:
    base = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "waffles"]
    for split, n, offset in (("train", 6, 0), ("test", 2, 100)):
        listing = {c: [f"{c}/{offset + i}" for i in range(n)] for c in classes}
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(listing))
        for entries in listing.values():
            for k, e in enumerate(entries):
                put(base / "images" / f"{e}.jpg", k)
    write_lines(base / "meta" / "classes.txt", classes)


def mit67(root: Path) -> None:
    base = root / "mit67"
    classes = ["airport_inside", "bakery", "winecellar"]
    train = [f"{c}/{c}_{i:04d}.jpg" for c in classes for i in range(5)]
    test = [f"{c}/{c}_{i:04d}.jpg" for c in classes for i in range(5, 7)]
    for k, e in enumerate(train + test):
        put(base / "Images" / e, k)
    write_lines(base / "TrainImages.txt", train)
    write_lines(base / "TestImages.txt", test)


def pets(root: Path) -> None:
    base = root / "oxford-iiit-pet"
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("yorkshire_terrier", 2)]
    rows = {"trainval": [], "test": []}
    for label, (breed, species) in enumerate(breeds, start=1):  # class ids in the files are 1-based
        for i in range(1, 8):
            image_id = f"{breed}_{i}"
            rows["trainval" if i <= 5 else "test"].append(f"{image_id} {label} {species} {label}")
            put(base / "images" / f"{image_id}.jpg", i)
    for split, lines in rows.items():
        write_lines(base / "annotations" / f"{split}.txt", lines)


def flowers102(root: Path) -> None:
    from scipy.io import savemat

    base = root / "flowers-102"
    labels = np.repeat(np.arange(1, 4), 8)  # 24 images, classes 1..3 (1-based, as in imagelabels.mat)
    for i in range(1, len(labels) + 1):
        put(base / "jpg" / f"image_{i:05d}.jpg", i)
    ids = {c: [i + 1 for i in range(len(labels)) if labels[i] == c] for c in (1, 2, 3)}
    pick = lambda lo, hi: np.array([i for c in (1, 2, 3) for i in ids[c][lo:hi]], dtype=np.uint16)
    savemat(base / "imagelabels.mat", {"labels": labels[None, :].astype(np.uint8)})
    savemat(base / "setid.mat", {"trnid": pick(0, 2)[None, :], "valid": pick(2, 4)[None, :],
                                 "tstid": pick(4, 8)[None, :]})


def caltech101(root: Path) -> None:
    base = root / "caltech101" / "101_ObjectCategories"
    for c, n in (("Faces", 9), ("accordion", 10), ("yin_yang", 12), ("BACKGROUND_Google", 3)):
        for i in range(1, n + 1):  # one grayscale image per class, as in the real data
            put(base / c / f"image_{i:04d}.jpg", i, mode="L" if i == 1 else "RGB")


def caltech_truncate(root: Path) -> None:
    (root / "caltech101" / "101_ObjectCategories" / "accordion" / "image_0010.jpg").unlink()


def cars(root: Path) -> None:
    from scipy.io import savemat

    base = root / "stanford_cars"
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "smart fortwo Convertible 2012",
                      "Volvo XC90 SUV 2007"], dtype=object)
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names[None, :]})
    for folder, annos, per_class in (("cars_train", "devkit/cars_train_annos.mat", 5),
                                     ("cars_test", "cars_test_annos_withlabels.mat", 3)):
        n = len(names) * per_class
        record = np.zeros((1, n), dtype=[(f, "O") for f in
                                         ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")])
        for i in range(n):
            fname = f"{i + 1:05d}.jpg"
            record[0, i] = (np.uint8(1), np.uint8(1), np.uint8(6), np.uint8(6), np.uint8(i % len(names) + 1), fname)
            put(base / folder / fname, i)
        savemat(base / annos, {"annotations": record})


def aircraft(root: Path) -> None:
    base = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "Cessna 172", "F/A-18"]  # real names hold spaces and slashes
    write_lines(base / "variants.txt", variants)
    number = iter(range(1000000, 2000000))
    for split in ("train", "val", "test"):
        rows = []
        for v in variants:
            for _ in range(2):
                image_id = f"{next(number):07d}"
                rows.append(f"{image_id} {v}")
                put(base / "images" / f"{image_id}.jpg", int(image_id))
        write_lines(base / f"images_variant_{split}.txt", rows)


def dtd(root: Path) -> None:
    base = root / "dtd" / "dtd"
    classes = ["banded", "cracked", "zigzagged"]
    files = {c: [f"{c}/{c}_{i:04d}.jpg" for i in range(6)] for c in classes}
    for entries in files.values():
        for k, e in enumerate(entries):
            put(base / "images" / e, k)
    for p in (1, 2):  # partition 2 reverses the roles, so a wrong partition gives other splits
        order = ("train", "val", "test") if p == 1 else ("test", "val", "train")
        for j, split in enumerate(order):
            write_lines(base / "labels" / f"{split}{p}.txt", [e for c in classes for e in files[c][2 * j:2 * j + 2]])


def sun397(root: Path) -> None:
    base = root / "SUN397"
    classes = ["/a/abbey", "/b/bakery/shop", "/y/youth_hostel"]  # some classes are nested
    write_lines(base / "ClassName.txt", classes)
    rows = {"Training_01": [], "Testing_01": []}
    for c in classes:
        for i in range(7):
            rows["Training_01" if i < 5 else "Testing_01"].append(f"{c}/sun_{c.split('/')[2]}{i:04d}.jpg")
    for k, line in enumerate(rows["Training_01"] + rows["Testing_01"]):  # one PNG named .jpg, as in the real data
        put(base / line.lstrip("/"), k, fmt="PNG" if k == 3 else "JPEG")
    for name, lines in rows.items():
        write_lines(base / "Partitions" / f"{name}.txt", lines)


def folder(root: Path) -> None:
    for split, n in (("train", 5), ("test", 2)):
        for c in ("cat", "dog", "fox"):
            for i in range(n):
                put(root / "mytask" / split / c / f"{i}.png", i, fmt="PNG")


def unlink_listed(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


c10_write, c10_truncate = cifar_writer("cifar10", 10, 6, 2)
c100_write, c100_truncate = cifar_writer("cifar100", 100, 3, 1)

FAKES = {
    "cifar10": Fake(c10_write, {"variant": "cifar10", "val_per_class": 2, "seed": 0}, 10,
                    {"train": 40, "val": 20, "test": 20}, {"classes": 10, "train": 60, "test": 20}, c10_truncate),
    "cifar100": Fake(c100_write, {"variant": "cifar100", "val_per_class": 1, "seed": 0}, 100,
                     {"train": 200, "val": 100, "test": 100}, {"classes": 100, "train": 300, "test": 100},
                     c100_truncate),
    "food101": Fake(food101, {"val_per_class": 2, "seed": 0}, 3, {"train": 12, "val": 6, "test": 6},
                    {"classes": 3, "train": 18, "test": 6}, unlink_listed("food-101/images/waffles/101.jpg")),
    "mit67": Fake(mit67, {"val_per_class": 2, "seed": 0}, 3, {"train": 9, "val": 6, "test": 6},
                  {"classes": 3, "train": 15, "test": 6}, unlink_listed("mit67/Images/bakery/bakery_0006.jpg")),
    "pets": Fake(pets, {"val_per_class": 2, "seed": 0}, 3, {"train": 9, "val": 6, "test": 6},
                 {"classes": 3, "trainval": 15, "test": 6}, unlink_listed("oxford-iiit-pet/images/Abyssinian_3.jpg")),
    "flowers102": Fake(flowers102, {}, 3, {"train": 6, "val": 6, "test": 12},
                       {"classes": 3, "train": 6, "val": 6, "test": 12},
                       unlink_listed("flowers-102/jpg/image_00024.jpg")),
    "caltech101": Fake(caltech101, {"train_per_class": 3, "val_per_class": 2, "seed": 0}, 3,
                       {"train": 9, "val": 6, "test": 16}, {"classes": 3, "images": 31}, caltech_truncate),
    "cars": Fake(cars, {"val_fraction": 0.2, "seed": 0}, 4, {"train": 16, "val": 4, "test": 12},
                 {"classes": 4, "train": 20, "test": 12}, unlink_listed("stanford_cars/cars_test/00012.jpg")),
    "aircraft": Fake(aircraft, {}, 3, {"train": 6, "val": 6, "test": 6},
                     {"classes": 3, "train": 6, "val": 6, "test": 6},
                     unlink_listed("fgvc-aircraft-2013b/data/images/1000000.jpg")),
    "dtd": Fake(dtd, {"partition": 1}, 3, {"train": 6, "val": 6, "test": 6},
                {"classes": 3, "train": 6, "val": 6, "test": 6}, unlink_listed("dtd/dtd/images/banded/banded_0005.jpg")),
    "sun397": Fake(sun397, {"partition": 1, "val_per_class": 2, "seed": 0}, 3, {"train": 9, "val": 6, "test": 6},
                   {"classes": 3, "train": 15, "test": 6}, unlink_listed("SUN397/a/abbey/sun_abbey0000.jpg")),
}
for _fake in FAKES.values():
    _fake.overrides = [f"dataset.load.{k}={v}" for k, v in _fake.options.items()] + ["dataset.load.strict=false"]
