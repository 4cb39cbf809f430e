"""AugSelf's train/val/test splits (`protocol=augself`), exactly as its linear-evaluation code makes them.

Source: Lee et al., NeurIPS 2021, github.com/hankook/AugSelf, `datasets.py: load_datasets` (facts, not code):
- Food-101, CIFAR-10/100, Pets, MIT67: `torch.utils.data.random_split(trainval, [n_train, n_val],
  generator=torch.Generator().manual_seed(seed))` over the official train list in its loader's order;
  random_split takes `randperm(n)` and cuts it in order, so train = perm[:n_train], val = perm[n_train:].
- SUN397 and Caltech-101: fixed index lists (`splits/*.pth`, shipped here as JSON, see augself_splits/).
- DTD: the official partition 1; Flowers-102: the official split. Both are what our loaders give already.
- Cars and FGVC Aircraft are not in the released code: they keep the project's split (Aircraft's official
  one, as AugSelf's paper says; Cars the seeded 20% per class), and the record says so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from bench import UserError
from bench.data import Task, checks

# dataset -> (train, val, seed) of its random_split call
RANDOM_SPLIT = {"food101": (68_175, 7_575, 42), "cifar10": (45_000, 5_000, 43), "cifar100": (45_000, 5_000, 44),
                "pets": (2_940, 740, 49), "mit67": (4_690, 670, 51)}
# dataset -> sha256 of the JSON index lists (bench/data/augself_splits/), checked before use
INDEX_LISTS = {"sun397": "1d976ec81fb12ec75d89c36396a5d689e99a4840b07483a87e4705cf06b51f0d",
               "caltech101": "fc8f187624eb9d072b999f614f8eab4235c55f275abc5c2cec110f2d6db4e8c7"}
OFFICIAL = {"dtd": "DTD's official partition 1 (AugSelf's)", "flowers102": "Flowers-102's official split (AugSelf's)",
            "aircraft": "the official split (not in AugSelf's code; the paper's choice)"}
LOADERS = set(RANDOM_SPLIT) | set(INDEX_LISTS)  # the loaders that take split="augself"
SPLITS_DIR = Path(__file__).with_name("augself_splits")


def rule(dataset: str) -> str:
    """One line for the record: how `protocol=augself` splits this dataset."""
    if dataset in RANDOM_SPLIT:
        n_train, n_val, seed = RANDOM_SPLIT[dataset]
        return f"AugSelf: random_split(trainval, [{n_train}, {n_val}]) with seed {seed}"
    if dataset in INDEX_LISTS:
        return f"AugSelf: fixed index lists splits/{dataset}.pth"
    return OFFICIAL.get(dataset, "the project's canonical split (AugSelf's code has none for this dataset)")


def random_split_indices(n: int, n_val: int, seed: int) -> tuple[list[int], list[int]]:
    """The (train, val) indices `random_split(range(n), [n - n_val, n_val], generator(seed))` gives."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[:n - n_val], perm[n - n_val:]


def index_lists(dataset: str) -> list[list[int]]:
    path = SPLITS_DIR / f"{dataset}.json"
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read AugSelf's split file {path}: {err}") from None
    if hashlib.sha256(payload).hexdigest() != INDEX_LISTS[dataset]:
        raise UserError(f"AugSelf's split file {path} is damaged (its sha256 differs from the pinned one); "
                        f"restore it from git")
    return json.loads(payload)


def val_size(dataset: str, n: int, strict: bool) -> int:
    """AugSelf's val size; on a copy of another size (strict=False: tests, subsets) the same fraction."""
    n_train, n_val, _ = RANDOM_SPLIT[dataset]
    if n == n_train + n_val:
        return n_val
    if strict:
        raise UserError(f"AugSelf's {dataset} split needs {n_train + n_val:,} train+val examples, found {n:,}")
    return max(1, round(n * n_val / (n_train + n_val)))


def task(dataset: str, base: Path, classes: Sequence[str], trainval: tuple[list, list], test: tuple[list, list] | None,
         *, strict: bool, read=None) -> Task:
    """The Task of AugSelf's split. `trainval` is in AugSelf's loader order; for Caltech-101 it is the whole
    dataset and `test` is None (its third index list is the test split)."""
    items, labels = trainval
    pick = lambda idx: ([items[i] for i in idx], [labels[i] for i in idx])
    if dataset in RANDOM_SPLIT:
        _, _, seed = RANDOM_SPLIT[dataset]
        train, val = random_split_indices(len(items), val_size(dataset, len(items), strict), seed)
        parts = {"train": pick(train), "val": pick(val), "test": test}
    elif dataset in INDEX_LISTS:
        lists = index_lists(dataset)
        need = max(max(idx) for idx in lists) + 1
        if len(items) != need:
            raise UserError(f"AugSelf's fixed {dataset} split indexes {need:,} examples in its loader's order; "
                            f"this copy has {len(items):,} (a full copy of the dataset is needed)")
        parts = dict(zip(("train", "val", "test"), map(pick, lists)))
        if test is not None:
            parts["test"] = test
    else:
        raise ValueError(f"no AugSelf split rule for {dataset}")
    return checks.task(dataset, classes, base, parts, read)


def loader_options(dataset: dict, split: str) -> dict:
    """Extra options of the dataset's loader under a protocol's split rule; checked before any work."""
    check(split)
    if split == "canonical":
        return {}
    if dataset["name"] == "dtd" and dataset["load"].get("partition") != 1:
        raise UserError(f"AugSelf's DTD split is partition 1, not {dataset['load'].get('partition')}")
    return {"split": split} if dataset["name"] in LOADERS else {}


def check(split: str) -> None:
    if split not in ("canonical", "augself"):
        raise UserError(f"unknown split rule {split!r}; known: canonical, augself")
