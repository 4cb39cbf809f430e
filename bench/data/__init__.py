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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from bench import UserError

SPLITS = ("train", "val", "test")


class ImageList(torch.utils.data.Dataset):
    """(image, label) pairs; `read(item)` turns an item (a relative path, an index ...) into a PIL image.

    `items` identify the examples independently of the machine (relative paths, not absolute ones).
    `source` says where the images are read from on this machine (the dataset's folder): the feature cache
    keys on it too, so two folders with the same file names never share features. What the images are read
    from, for `fingerprint()`: `root`, when each item is a file relative to it (a folder of images), or
    `store`, a folder whose files all the items are read out of (CIFAR's pickled batches); neither for
    images that are not files of the dataset (sklearn's digits).
    """

    def __init__(self, items: Sequence, labels: Sequence[int], read: Callable, transform: Callable | None = None,
                 source: str = "", *, root: str | None = None, store: str | None = None):
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} items but {len(labels)} labels")
        self.items, self.labels, self.read, self.transform = list(items), [int(t) for t in labels], read, transform
        self.source, self.root, self.store = source, root, store

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        image = self.read(self.items[i])
        return (self.transform(image) if self.transform else image), self.labels[i]

    def with_transform(self, transform: Callable) -> ImageList:
        return ImageList(self.items, self.labels, self.read, transform, self.source, root=self.root, store=self.store)

    def fingerprint(self, content: bool = False) -> str:
        """sha256 of what the split is: its (item, label) list, in order, and the files its images are read
        from, each by its size and modification time (the rule make and git use: a file rewritten in place
        changes the fingerprint, and no byte of a large dataset is read), or with `content` by the sha256 of
        its bytes (reads every file; the same on every machine, whatever the files' times)."""
        pairs = [[str(i), t] for i, t in zip(self.items, self.labels)]
        if self.root is not None:
            pairs = [[item, t, file_facts(os.path.join(self.root, item), content)] for item, t in pairs]
        payload = pairs
        if self.store is not None:
            files = sorted(p for p in Path(self.store).iterdir() if p.is_file())
            payload = {"items": pairs, "store": [[p.name, file_facts(str(p), content)] for p in files]}
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def file_facts(path: str, content: bool) -> list | str | None:
    """[size, mtime in ns] of a file, or the sha256 of its bytes; None when it cannot be read (the run says
    why when it reads the image)."""
    try:
        if not content:
            st = os.stat(path)
            return [st.st_size, st.st_mtime_ns]
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None


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
