"""What every on-disk dataset loader shares: find its folder, check its files and counts, build the Task.

Each message is one sentence that says what was expected, what was found and where, and for a
missing dataset how to get it (`seabench data get NAME` or datasets/README.md).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench import UserError
from bench.data import ImageList, Task, read_rgb
from bench.data.splits import carve


def how_to_get(name: str) -> str:
    return f"get it with `seabench data get {name}` or see the {name} section of datasets/README.md"


def folder(root: str | Path, subfolder: str, name: str) -> Path:
    """The dataset's own folder under the common data root; a clear error when it is absent."""
    path = Path(root).expanduser() / subfolder
    if not path.is_dir():
        raise UserError(f"dataset {name} is not on disk: expected the folder {path}; {how_to_get(name)}")
    return path


def need(base: Path, relatives: Sequence[str], name: str) -> list[Path]:
    """The annotation files a loader reads; all must exist."""
    paths = [base / r for r in relatives]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"dataset {name} is incomplete: missing {', '.join(missing)}; {how_to_get(name)}")
    return paths


def images_present(base: Path, items: Sequence[str], name: str, listed_in: str) -> None:
    """Every image an annotation file lists must be on disk (a truncated download fails here)."""
    missing = [i for i in items if not os.path.isfile(os.path.join(base, i))]
    if missing:
        raise UserError(f"dataset {name} is incomplete: {len(missing)} of the {len(items)} images listed in "
                        f"{listed_in} are missing under {base} (first: {missing[0]}); {how_to_get(name)}")


def counts(name: str, where: Path, found: Mapping[str, int], expected: Mapping[str, int] | None) -> None:
    """Compare the official list sizes (and class count) with the published ones; `expected=None` skips it."""
    if expected is None or dict(found) == dict(expected):
        return
    show = lambda d: ", ".join(f"{k} {v:,}" for k, v in d.items())
    raise UserError(f"dataset {name} at {where} does not have its official size: expected {show(expected)}, "
                    f"found {show(found)} (a truncated download or a wrong partition?); {how_to_get(name)}")


def split_off(keys: Sequence[str], labels: Sequence[int], *, name: str, seed: int,
              per_class: int | None = None, fraction: float | None = None) -> tuple[list[int], list[int]]:
    """`bench.data.splits.carve`, with a too-small class reported as a UserError."""
    try:
        return carve(keys, labels, per_class=per_class, fraction=fraction, seed=seed)
    except ValueError as err:
        raise UserError(f"dataset {name} cannot be split: {err}") from None


def read_under(base: str, item: str):
    """Read `base/item` as RGB; module-level so that DataLoader workers can pickle it (with partial)."""
    return read_rgb(os.path.join(base, item))


def task(name: str, classes: Sequence[str], base: Path, parts: Mapping[str, tuple[Sequence, Sequence[int]]],
         read=None) -> Task:
    """A Task from (items, labels) per split; items are paths relative to `base` unless `read` is given."""
    files = {"root": str(base)} if read is None else {"store": str(base)}  # what `fingerprint` covers
    read = read or functools.partial(read_under, str(base))
    labels = [t for _, ts in parts.values() for t in ts]
    if labels and not 0 <= min(labels) <= max(labels) < len(classes):
        raise UserError(f"dataset {name} at {base}: labels span {min(labels)}..{max(labels)} "
                        f"but there are {len(classes)} classes")
    trained = sorted(set(parts["train"][1]))
    if len(trained) < 2:
        raise UserError(f"dataset {name} at {base}: train holds images of {len(trained)} class(es) "
                        f"({', '.join(classes[t] for t in trained)}); a classifier needs at least two")
    for split, (_, ts) in parts.items():
        if unseen := sorted(set(ts) - set(trained)):
            raise UserError(f"dataset {name} at {base}: {split} holds images of classes that train lacks: "
                            f"{', '.join(classes[t] for t in unseen[:8])}" + (" ..." if len(unseen) > 8 else "")
                            + f" ({len(unseen)} in all); every class needs train images")
    splits = {split: ImageList(list(items), list(ts), read, source=str(Path(base).resolve()), **files)
              for split, (items, ts) in parts.items()}
    return Task(name=name, classes=list(classes), splits=splits)


def carve_val(name: str, base: Path, classes: Sequence[str], train: tuple[list, list], test: tuple[list, list],
              *, seed: int, per_class: int | None = None, fraction: float | None = None, read=None) -> Task:
    """The common case: val carved per class from the official train list, test as published."""
    items, labels = train
    rest, val = split_off([str(i) for i in items], labels, name=name, seed=seed,
                          per_class=per_class, fraction=fraction)
    parts = {"train": ([items[i] for i in rest], [labels[i] for i in rest]),
             "val": ([items[i] for i in val], [labels[i] for i in val]),
             "test": test}
    return task(name, classes, base, parts, read)


def mat(path: Path, keys: Sequence[str]) -> dict:
    """The variables `keys` of a MATLAB annotation file (singleton dimensions squeezed)."""
    from scipy.io import loadmat

    try:
        content = loadmat(path, squeeze_me=True)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"cannot read {path} (truncated download?): {err}") from None
    missing = [k for k in keys if k not in content]
    if missing:
        raise UserError(f"{path} lacks the variables {', '.join(missing)}")
    return {k: content[k] for k in keys}


def lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file."""
    with open(path, encoding="utf-8") as f:
        return [s.strip() for s in f if s.strip()]
