"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 grayscale images of 10 classes, no network.

Split per class with the seeded rule of `bench.data.splits`: `test_per_class` for test, then
`val_per_class` of the rest for val, the remainder for train.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from bench.data import ImageList, Task
from bench.data.splits import carve


def image(pixels: np.ndarray, index: int) -> Image.Image:
    """The index-th digit as an 8x8 RGB image (scikit-learn stores intensities 0..16)."""
    gray = (pixels[index] * (255.0 / 16.0)).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def load(*, root=None, val_per_class: int, test_per_class: int, seed: int) -> Task:
    from sklearn.datasets import load_digits

    data = load_digits()
    keys = [f"digit-{i:04d}" for i in range(len(data.target))]
    labels = [int(t) for t in data.target]
    rest, test = carve(keys, labels, per_class=test_per_class, seed=seed)
    train_in_rest, val_in_rest = carve([keys[i] for i in rest], [labels[i] for i in rest],
                                       per_class=val_per_class, seed=seed)
    read = functools.partial(image, data.images)
    parts = {"train": [rest[i] for i in train_in_rest], "val": [rest[i] for i in val_in_rest], "test": test}
    splits = {name: ImageList(idx, [labels[i] for i in idx], read, source="sklearn.datasets.load_digits")
              for name, idx in parts.items()}
    return Task(name="digits", classes=[str(c) for c in data.target_names], splits=splits)
