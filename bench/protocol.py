"""The evaluation protocol (DESIGN section 3). Test scores are computed once, after every choice is made.

`select`: every grid point (x every seed) is fitted on train and scored on val with the dataset's
metric (mean over seeds); the best point (ties: the earlier one) is refitted on train+val and
scored on test once. A pick on the edge of its grid is flagged.
`reference`: fixed hyperparameters, fit on train, score on test once (the SeA reference code's setting).

Both rules are written once over a learner's `fit_score(points, fit_on, score_on) -> predictions`
(`choose`, `fixed`): feature methods (`on_features`) and fine-tuning (`bench.finetune`) plug in there.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import torch

from bench import UserError
from bench.data.splits import carve
from bench.metrics import mean_per_class, score, top1

log = logging.getLogger(__name__)

VERSION = 1  # bump whenever a rule here changes; every record carries it

Data = dict[str, tuple[torch.Tensor, torch.Tensor]]


def grid_points(grid: dict[str, list]) -> list[dict]:
    """The cartesian product of the grid's value lists, in the order the YAML gives them."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def edges(grid: dict[str, list], chosen: dict) -> dict[str, str]:
    """For each swept numeric key whose pick is its smallest or largest value: 'low' or 'high'."""
    flags = {}
    for key, values in grid.items():
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if len(set(values)) > 1 and numeric:
            if chosen[key] == min(values):
                flags[key] = "low"
            elif chosen[key] == max(values):
                flags[key] = "high"
    return flags


def scores(pred: torch.Tensor, y: torch.Tensor, metric: str) -> dict[str, list[float]]:
    """Test scores of predictions [G, N] (one row per seed)."""
    return {"score": [score(metric, p, y) for p in pred], "top1": [top1(p, y) for p in pred],
            "mean_per_class": [mean_per_class(p, y) for p in pred]}


def with_val(data: Data, *, val_fraction: float, split_seed: int) -> Data:
    """`data` itself when it has a val split, else train split into train and a seeded per-class val."""
    if "val" in data:
        return data
    X, y = data["train"]
    try:
        rest, val = carve([str(i) for i in range(len(y))], y.tolist(), fraction=val_fraction, seed=split_seed)
    except ValueError as err:
        raise UserError(f"cannot carve a val split from train ({err}); give val files") from None
    log.info("no val split: carved %d of %d train examples as val (%.0f%% per class)",
             len(val), len(y), 100 * val_fraction)
    return {**data, "train": (X[rest], y[rest]), "val": (X[val], y[val])}


def choose(fit_score: Callable, labels: dict[str, torch.Tensor], *, params: dict, grid: dict[str, list],
           seeds: list[int], metric: str) -> dict:
    """The selection rule over any learner. `fit_score(points, fit_on, score_on)` fits every point of
    `points` (complete hyperparameter dicts with their `seed`) on the split `fit_on` ("train" or
    "train+val") and returns its predictions [G, N] on the split `score_on`; `labels` maps a split to its
    labels. Feature methods fit all points at once; fine-tuning trains them one by one."""
    if unknown := set(grid) - set(params):
        raise UserError(f"grid keys {sorted(unknown)} are not hyperparameters of this method; "
                        f"known: {sorted(params)}")
    combos = grid_points(grid)
    points = [{**params, **combo, "seed": s} for combo in combos for s in seeds]
    pred = fit_score(points, "train", "val")
    val = torch.tensor([score(metric, p, labels["val"]) for p in pred]).view(len(combos), len(seeds))
    best = int(val.mean(1).argmax())  # argmax returns the first maximum: ties go to the earlier point
    chosen = combos[best]
    test = fit_score([{**params, **chosen, "seed": s} for s in seeds], "train+val", "test")
    return {"chosen": chosen, "edge": edges(grid, chosen), "params": {**params, **chosen},
            "curve": [{"point": c, "val": v.mean().item(), "val_per_seed": v.tolist()} for c, v in zip(combos, val)],
            "test": scores(test, labels["test"], metric), "seeds": seeds}


def fixed(fit_score: Callable, labels: dict[str, torch.Tensor], *, params: dict, seeds: list[int],
          metric: str) -> dict:
    """The `reference` rule over any learner (see `choose`): fixed params, fit on train, test once."""
    test = fit_score([{**params, "seed": s} for s in seeds], "train", "test")
    return {"chosen": {}, "edge": {}, "params": params, "curve": [], "seeds": seeds,
            "test": scores(test, labels["test"], metric)}


def on_features(fit: Callable, data: Data, *, num_classes: int, device) -> Callable:
    """`fit_score` (see `choose`) of a feature method's `fit` on the feature splits `data`."""
    def fit_score(points, fit_on, score_on):
        X, y = data[fit_on] if fit_on in data else (torch.cat(pair) for pair in zip(data["train"], data["val"]))
        return fit(X, y, num_classes=num_classes, points=points, device=device).predict(data[score_on][0])

    return fit_score


def select(fit: Callable, data: Data, *, params: dict, grid: dict[str, list], seeds: list[int], metric: str,
           num_classes: int, device, val_fraction: float, split_seed: int) -> dict:
    data = with_val(data, val_fraction=val_fraction, split_seed=split_seed)
    return {**choose(on_features(fit, data, num_classes=num_classes, device=device),
                     {k: y for k, (_, y) in data.items()}, params=params, grid=grid, seeds=seeds,
                     metric=metric),
            "sizes": {"train": len(data["train"][1]), "val": len(data["val"][1]), "test": len(data["test"][1])}}


def reference(fit: Callable, data: Data, *, params: dict, seeds: list[int], metric: str, num_classes: int,
              device) -> dict:
    return {**fixed(on_features(fit, data, num_classes=num_classes, device=device),
                    {k: y for k, (_, y) in data.items()}, params=params, seeds=seeds, metric=metric),
            "sizes": {"train": len(data["train"][1]), "test": len(data["test"][1])}}


PROTOCOLS = {"selection": select, "reference": reference}
