"""`dataset=features`: features a user brings, in the format the SeA reference code reads.

Per split, two files written with `torch.save`: a float tensor of features [N, D] and a list (or
tensor) of N integer labels. Train and test are required; val is optional, and without it the
selection protocol carves val out of train (see `bench.protocol`).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from bench import UserError
from bench.data import FeatureSet
from bench.fetch import digests


def read(split: str, feat_path, label_path) -> tuple[torch.Tensor, torch.Tensor, str]:
    for what, key, path in [("features", "feat", feat_path), ("labels", "label", label_path)]:
        if path is None:
            raise UserError(f"{split} {what} not given: set dataset.load.{split}_{key}_path")
        if not Path(path).is_file():
            raise UserError(f"{split} {what} file not found: {path}")
    try:
        x = torch.load(feat_path, map_location="cpu", weights_only=True)
        y = torch.load(label_path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:  # not a torch file
        raise UserError(f"cannot read {split} features or labels ({feat_path}, {label_path}): {err}") from None
    if not torch.is_tensor(x) or x.ndim != 2 or not x.is_floating_point():
        raise UserError(f"{split} features in {feat_path} must be a float tensor of shape [N, D]")
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.is_floating_point() or y.is_complex():
        raise UserError(f"{split} labels in {label_path} must be a list or 1-d tensor of integers")
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
    dims = {split: x.shape[1] for split, (x, _) in splits.items()}
    if len(set(dims.values())) > 1:
        raise UserError(f"feature dimensions differ between splits: {dims}")
    num_classes = int(max(y.max() for _, y in splits.values())) + 1
    return FeatureSet(name=name, num_classes=num_classes, splits=splits, hashes=hashes)
