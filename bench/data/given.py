"""`dataset=features`: features a user brings, in the format the SeA reference code reads.

Per split, two files written with `torch.save`: a float tensor of features [N, D] and a list (or
tensor) of N integer labels. Train and test are required; val is optional, and without it the
selection protocol carves val out of train (see `bench.protocol`).
"""

from __future__ import annotations

import hashlib
import itertools
import pickle
from pathlib import Path

import torch

from bench import UserError
from bench.data import FeatureSet
from bench.fetch import digests

FORMAT = "a file written by torch.save holding a torch tensor or a list (torch.save(torch.as_tensor(x), path))"


def load_file(path, what: str):
    """What `torch.load` finds in `path`, in safe mode; anything it cannot read is one sentence."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # safe mode met a type it does not allow, or bytes that are no pickle
        if "numpy" in str(err):
            raise UserError(f"{what} in {path} hold a numpy array; save torch.from_numpy(array) instead "
                            f"(expected {FORMAT})") from None
        raise UserError(f"cannot read {what} in {path}: it is not a torch.save file of a tensor or a list; "
                        f"expected {FORMAT}") from None
    except Exception as err:  # noqa: BLE001 -- text, truncated or foreign files make torch raise nearly anything
        raise UserError(f"cannot read {what} in {path}: torch.load fails on it ({type(err).__name__}); "
                        f"expected {FORMAT}") from None


def describe(value) -> str:
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)) and value:
        return f"a {type(value).__name__} of {type(value[0]).__name__}"
    return f"a {type(value).__name__}"


def read(split: str, feat_path, label_path) -> tuple[torch.Tensor, torch.Tensor, str]:
    for what, key, path in [("features", "feat", feat_path), ("labels", "label", label_path)]:
        if path is None:
            raise UserError(f"{split} {what} not given: set dataset.load.{split}_{key}_path")
        if not Path(path).is_file():
            raise UserError(f"{split} {what} file not found: {path}")
    x, y = load_file(feat_path, f"{split} features"), load_file(label_path, f"{split} labels")
    if not torch.is_tensor(x) or x.ndim != 2 or not x.is_floating_point():
        raise UserError(f"{split} features in {feat_path} must be a float tensor of shape [N, D], not "
                        f"{describe(x)}")
    if x.numel() == 0:
        raise UserError(f"{split} features in {feat_path} are empty (shape {tuple(x.shape)})")
    try:
        y = torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):  # strings, nested lists of different lengths ...
        raise UserError(f"{split} labels in {label_path} must be a list or 1-d tensor of integers, "
                        f"not {describe(y)}") from None
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UserError(f"{split} labels in {label_path} must be a list or 1-d tensor of integers, "
                        f"not {describe(y)}")
    if len(x) != len(y):
        raise UserError(f"{split} features have {len(x)} rows but {split} labels have {len(y)} entries "
                        f"({feat_path}, {label_path})")
    if not torch.isfinite(x).all():
        raise UserError(f"{split} features in {feat_path} contain NaN or infinite values")
    if len(y) and y.min() < 0:
        raise UserError(f"{split} labels in {label_path} must be >= 0 (found {int(y.min())})")
    files = digests(Path(feat_path))["sha256"] + digests(Path(label_path))["sha256"]
    digest = hashlib.sha256(files.encode()).hexdigest()
    return x.float(), y.long(), digest


def listed(ids: list[int], most: int = 8) -> str:
    return ", ".join(map(str, ids[:most])) + (f" ... ({len(ids)} in all)" if len(ids) > most else "")


def check_labels(labels: dict[str, torch.Tensor], paths: dict[str, str]) -> None:
    """The classes are the ids 0..K-1, each with train examples: a val or test class never seen in train
    cannot be predicted (its examples only lower the score), and sparse ids (0, 100000) would make a head of
    100,001 classes, most of them empty."""
    trained = set(labels["train"].unique().tolist())
    for split in ("val", "test"):
        if split in labels and (unseen := sorted(set(labels[split].unique().tolist()) - trained)):
            raise UserError(f"the {split} labels in {paths[split]} hold classes that never occur in train: "
                            f"{listed(unseen)}; every {split} class needs train examples")
    if (top := max(trained)) + 1 > len(trained):  # ids are >= 0 (read checks): some below the largest lack
        gaps = list(itertools.islice((k for k in range(top) if k not in trained), 8))
        raise UserError(f"the train labels in {paths['train']} must number the classes 0..K-1 without gaps: "
                        f"they hold {len(trained)} classes up to {top}, and lack "
                        f"{listed(gaps)}{' ...' if top + 1 - len(trained) > 8 else ''} "
                        f"({top + 1 - len(trained)} in all); renumber them "
                        f"(torch.unique(labels, return_inverse=True)[1])")


def load(*, root=None, name: str, train_feat_path, train_label_path, test_feat_path, test_label_path,
         val_feat_path=None, val_label_path=None) -> FeatureSet:
    splits, hashes = {}, {}
    for split, fp, lp in [("train", train_feat_path, train_label_path), ("test", test_feat_path, test_label_path),
                          ("val", val_feat_path, val_label_path)]:
        if split == "val" and fp is None and lp is None:
            continue
        x, y, hashes[split] = read(split, fp, lp)
        splits[split] = (x, y)
    trained = splits["train"][1].unique().tolist()
    if len(trained) < 2:
        raise UserError(f"the train labels in {train_label_path} hold {len(trained)} class(es) {trained}; "
                        f"a classifier needs at least two")
    paths = {"train": train_label_path, "val": val_label_path, "test": test_label_path}
    check_labels({split: y for split, (_, y) in splits.items()}, paths)
    dims = {split: x.shape[1] for split, (x, _) in splits.items()}
    if len(set(dims.values())) > 1:
        raise UserError(f"feature dimensions differ between splits: {dims}")
    num_classes = int(max(y.max() for _, y in splits.values())) + 1
    return FeatureSet(name=name, num_classes=num_classes, splits=splits, hashes=hashes)
