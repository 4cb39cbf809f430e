"""What a dataset loader returns.

Each dataset family is one small module with a `load(root=..., **options)` function named by its
config (`conf/dataset/<name>.yaml`, key `load._target_`). Image datasets return a `Task`: the class
names and the canonical `train` / `val` / `test` splits as `ImageList`s. Datasets of ready-made
features (`dataset=features`) return a `FeatureSet` instead, and skip the backbone.

A loader reads files and returns lists of images and labels: this package may import bench.fetch (its
downloads), bench.config (`seabench doctor` reads conf/dataset/) and itself, never the backbones, features,
methods, protocol, records, sweep, report or CLI.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from bench import UserError

SPLITS = ("train", "val", "test")


class ImageList(torch.utils.data.Dataset):
    """(image, label) pairs; `read(item)` turns an item (a relative path, an index ...) into a PIL image.

    `items` identify the examples independently of the machine (relative paths, not absolute ones),
    so that `fingerprint()` is the same everywhere and can go into records. `source` says where the
    images are read from on this machine (the dataset's folder): the feature cache keys on it too, so
    two folders with the same file names never share features.
    """

    def __init__(self, items: Sequence, labels: Sequence[int], read: Callable, transform: Callable | None = None,
                 source: str = ""):
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} items but {len(labels)} labels")
        self.items, self.labels, self.read, self.transform = list(items), [int(t) for t in labels], read, transform
        self.source = source

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image = self.read(self.items[i])
        return (self.transform(image) if self.transform else image), self.labels[i]

    def with_transform(self, transform: Callable) -> ImageList:
        return ImageList(self.items, self.labels, self.read, transform, self.source)

    def fingerprint(self) -> str:
        """sha256 of the (item, label) list: what the examples are, in order, and how they are labelled."""
        payload = json.dumps([[str(i), t] for i, t in zip(self.items, self.labels)]).encode()
        return hashlib.sha256(payload).hexdigest()


@dataclass
class Task:
    """An image classification task with its canonical splits."""

    name: str
    classes: list[str]
    splits: dict[str, ImageList]  # keys: "train", "val", "test"
    warnings: list[str] = field(default_factory=list)  # what the loader let pass but a reader must know


@dataclass
class FeatureSet:
    """Ready-made features: split -> (features [N, D] float, labels [N] int64), plus a hash per split."""

    name: str
    num_classes: int
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    hashes: dict[str, str]
    warnings: list[str] = field(default_factory=list)  # what the loader let pass but a reader must know


def read_rgb(path: str | Path) -> Image.Image:
    """Open any image file as RGB, whatever its mode (grayscale, CMYK, palette) or its real format.

    PIL identifies the format from the content, not the extension, so a PNG named `.jpg` loads too.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
