"""The one rule that makes a split: per class, the items with the smallest seeded hash of their key.

A split is a pure function of the keys (file names, relative to the dataset root), the labels and a
seed: the same on every machine and in every process, and unchanged when the files are listed in
another order (no random generator, no dependence on listing order).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence


def rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def carve(keys: Sequence[str], labels: Sequence[int], *, per_class: int | None = None,
          fraction: float | None = None, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split indices into (rest, carved): from each class carve `per_class` items, or `fraction` of them
    (rounded half up, at least one), choosing the items of smallest seeded hash.

    Both lists are sorted by index. Raises ValueError when a class has too few items to carve.
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class and fraction")
    if fraction is not None and not 0 < fraction < 1 or per_class is not None and per_class < 1:
        raise ValueError(f"carve a fraction in (0, 1) or at least one item per class, not "
                         f"{fraction if fraction is not None else per_class}")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[int(label)].append(i)
    carved: list[int] = []
    for label, idx in sorted(by_class.items()):
        n = per_class if per_class is not None else max(1, int(fraction * len(idx) + 0.5))
        if n >= len(idx):
            raise ValueError(f"class {label} has {len(idx)} items, too few to carve {n} from it")
        carved += sorted(idx, key=lambda i: rank(str(keys[i]), seed))[:n]
    chosen = set(carved)
    return [i for i in range(len(keys)) if i not in chosen], sorted(carved)
