"""CIFAR-10 and CIFAR-100 from the official "python version" pickles, in torchvision's layout.

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

Items are "train/<index>" / "test/<index>" into the official arrays. Val: `val_per_class` images per
class carved from the official train set with the seeded rule (500 / 50 -> 45,000 / 5,000 / 10,000).
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from bench import UserError
from bench.data import augself, checks
from bench.data.download import Resource

# variant -> (folder, train files, test file, meta file, label key, class-name key); torchvision's layout
VARIANTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}
# official sizes (https://www.cs.toronto.edu/~kriz/cifar.html)
EXPECTED = {"cifar10": {"classes": 10, "train": 50_000, "test": 10_000},
            "cifar100": {"classes": 100, "train": 50_000, "test": 10_000}}
# archive md5s as published by torchvision.datasets.CIFAR10 / CIFAR100
RESOURCES = {
    "cifar10": (Resource("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         digest="md5:c58f30108f718f92721af3b95e74349a", source="torchvision"),),
    "cifar100": (Resource("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                          digest="md5:eb9058c3a382ffc7106e4002c42a8d85", source="torchvision"),),
}
FOLDERS = {name: spec[0] for name, spec in VARIANTS.items()}


def unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise UserError(f"cannot read CIFAR file {path} (truncated download?): {err}") from None


@functools.lru_cache(maxsize=4)
def arrays(folder: str, variant: str, split: str) -> tuple[np.ndarray, list[int]]:
    """Images [N, 32, 32, 3] uint8 and labels of one official split; cached once per process (worker)."""
    _, train_files, test_file, _, label_key, _ = VARIANTS[variant]
    images, labels = [], []
    for name in (train_files if split == "train" else [test_file]):
        entry = unpickle(Path(folder) / name)
        if "data" not in entry or label_key not in entry:
            raise UserError(f"CIFAR file {Path(folder) / name} lacks the keys 'data' and {label_key!r}")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += [int(t) for t in entry[label_key]]
    return np.concatenate(images), labels


def image(folder: str, variant: str, item: str) -> Image.Image:
    split, index = item.split("/")
    return Image.fromarray(arrays(folder, variant, split)[0][int(index)], mode="RGB")


def load(*, root, variant: str, val_per_class: int, seed: int, strict: bool = True, split: str = "canonical"):
    """`split="augself"`: AugSelf's random_split of the official train set (bench.data.augself)."""
    augself.check(split)
    if variant not in VARIANTS:
        raise UserError(f"unknown CIFAR variant {variant!r}; known: {', '.join(VARIANTS)}")
    subfolder, train_files, test_file, meta_file, _, names_key = VARIANTS[variant]
    base = checks.folder(root, subfolder, variant)
    checks.need(base, [*train_files, test_file, meta_file], variant)
    classes = list(unpickle(base / meta_file)[names_key])
    parts = {split: arrays(str(base), variant, split) for split in ("train", "test")}
    found = {"classes": len(classes), "train": len(parts["train"][1]), "test": len(parts["test"][1])}
    checks.counts(variant, base, found, EXPECTED[variant] if strict else None)
    train_items = [f"train/{i}" for i in range(found["train"])]
    test = ([f"test/{i}" for i in range(found["test"])], parts["test"][1])
    read = functools.partial(image, str(base), variant)
    if split == "augself":  # the training batches' order, as torchvision's CIFAR reads them
        return augself.task(variant, base, classes, (train_items, parts["train"][1]), test, strict=strict, read=read)
    return checks.carve_val(variant, base, classes, (train_items, parts["train"][1]), test,
                            seed=seed, per_class=val_per_class, read=read)
