"""The evaluation protocol (DESIGN section 3). Test scores are computed once, after every choice is made.

`select`: every grid point (x every seed) is fitted on train and scored on val with the dataset's
metric (mean over seeds, in float64); the best point (ties: the earlier one) is refitted on
train+val, starting from the heads validated at that point when the method takes `init`, and
scored on test once. A pick on the edge of its grid is flagged; so is a fit that stopped at its
iteration limit (methods that say how their fits ended).
`reference`: fixed hyperparameters, fit on train, score on test once (the SeA reference code's setting).
`augself`: AugSelf's linear evaluation: the selection rule on the splits its loaders made, the refit
warm-started from the chosen classifier when `warm_refit` (its splits come from bench.data.augself).

Each rule is written once over a learner's `fit_score(points, fit_on, score_on, start=None) ->
(predictions [G, N], fits or None)` (`choose`, `fixed`): feature methods (`on_features`) and fine-tuning
(`bench.finetune`) plug in there.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from collections.abc import Callable

import torch

from bench import UserError, results
from bench.data.splits import carve
from bench.methods import NOT_FITTED, Heads
from bench.metrics import mean_per_class, score, top1

log = logging.getLogger(__name__)

VERSION = 2  # bump whenever a rule here changes; every record carries it
# 2: val means in float64 (ties exact); the refit starts from the validated heads (methods with `init`)

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


def scores(pred: torch.Tensor, y: torch.Tensor, metric: str) -> dict[str, list]:
    """Test scores of predictions [G, N] (one row per seed), and the predictions per seed and the labels
    (packed) for paired tests."""
    return {"score": [score(metric, p, y) for p in pred], "top1": [top1(p, y) for p in pred],
            "mean_per_class": [mean_per_class(p, y) for p in pred],
            "predictions": [results.pack(p) for p in pred], "labels": results.pack(y)}


def max_iter_hit(curve: list[dict], final: list[dict] | None, name: str) -> list:
    """The grid points (and `name`, for the fit scored on test) one of whose fits stopped at max_iter or
    diverged (non-finite weights)."""
    def hit(ends):
        return any(f.get("stop") in ("max_iter", "diverged") for f in ends or [])

    flagged = [c["point"] for c in curve if hit(c.get("fit"))] + ([name] if hit(final) else [])
    if flagged:
        log.warning("fits stopped at their iteration limit (max_iter) or diverged, not converged: %s", flagged)
    return flagged


def with_val(data: Data, *, val_fraction: float, split_seed: int) -> Data:
    """`data` itself when it has a val split, else train split into train and a seeded per-class val."""
    if "val" in data:
        return data
    X, y = data["train"]
    try:
        rest, val = carve([str(i) for i in range(len(y))], y.tolist(), fraction=val_fraction, seed=split_seed)
    except ValueError as err:
        raise UserError(f"cannot carve a val split from train ({err}); give val files") from None
    log.info("no val split: carved %d of %d train examples as val (%g%% of each class, at least one)",
             len(val), len(y), 100 * val_fraction)
    return {**data, "train": (X[rest], y[rest]), "val": (X[val], y[val])}


def choose(fit_score: Callable, labels: dict[str, torch.Tensor], *, params: dict, grid: dict[str, list],
           seeds: list[int], metric: str, warm: bool = True) -> dict:
    """The selection rule over any learner. `fit_score(points, fit_on, score_on, start=None, rate=None)`
    fits every point of `points` (complete hyperparameter dicts with their `seed`) on the split `fit_on`
    ("train" or "train+val") and returns its predictions [G, N] on the split `score_on`, and how each fit
    ended (or None); `start`: the rows of the previous call's points to start from (the learner may ignore
    it); `rate`: predictions [N] on `score_on` -> their val score, for a learner that may end its sweep
    early (`linear`'s option `early_end`). A point whose fit says `stop: early end` was not fitted: it is
    left out of the choice, and its curve entry has no val score. `labels` maps a split to its labels.
    Feature methods fit all points at once; fine-tuning one by one."""
    if unknown := set(grid) - set(params):
        raise UserError(f"grid keys {sorted(unknown)} are not hyperparameters of this method; "
                        f"known: {sorted(params)}")
    combos, k = grid_points(grid), len(seeds)
    pred, ends = fit_score([{**params, **combo, "seed": s} for combo in combos for s in seeds], "train", "val",
                           rate=lambda p: score(metric, p, labels["val"]))
    val = torch.tensor([score(metric, p, labels["val"]) for p in pred], dtype=torch.float64).view(len(combos), k)
    fitted = [ends is None or all(f.get("stop") != NOT_FITTED for f in ends[i * k:(i + 1) * k])
              for i in range(len(combos))]
    if not all(fitted):
        log.info("the sweep ended early (early_end): %d of %d grid points not fitted, left out of the choice",
                 fitted.count(False), len(combos))
    # in float64 over the sorted scores: equal per-seed scores in another order give the same mean, to the
    # last bit (a float32 mean, or any mean in another order, can differ there and break a tie)
    means = val.sort(1).values.mean(1).masked_fill(~torch.tensor(fitted), -math.inf)
    best = int(means.argmax())  # argmax returns the first maximum: ties go to the earlier
    chosen = combos[best]
    test, refit = fit_score([{**params, **chosen, "seed": s} for s in seeds], "train+val", "test",
                            start=list(range(best * k, best * k + k)) if warm else None)
    curve = [{"point": c, "val": v.sort().values.mean().item(), "val_per_seed": v.tolist()} if ok
             else {"point": c, "val": None, "val_per_seed": None} for c, v, ok in zip(combos, val, fitted)]
    if ends is not None:
        for i, entry in enumerate(curve):
            entry["fit"] = ends[i * k:(i + 1) * k]
    return {"chosen": chosen, "edge": edges(grid, chosen), "params": {**params, **chosen}, "curve": curve,
            **({"refit": refit} if refit else {}), "max_iter_hit": max_iter_hit(curve, refit, "refit"),
            "test": scores(test, labels["test"], metric), "seeds": seeds}


def fixed(fit_score: Callable, labels: dict[str, torch.Tensor], *, params: dict, seeds: list[int],
          metric: str) -> dict:
    """The `reference` rule over any learner (see `choose`): fixed params, fit on train, test once."""
    test, final = fit_score([{**params, "seed": s} for s in seeds], "train", "test")
    return {"chosen": {}, "edge": {}, "params": params, "curve": [], "seeds": seeds,
            **({"fit": final} if final else {}), "max_iter_hit": max_iter_hit([], final, "fit"),
            "test": scores(test, labels["test"], metric)}


def on_features(fit: Callable, data: Data, *, num_classes: int, device) -> Callable:
    """`fit_score` (see `choose`) of a feature method's `fit` on the feature splits `data`. The heads of
    the last call are kept: a `start` passes its rows as `init` to a method whose `fit` takes one (the
    refit then starts where the chosen point was validated)."""
    takes = inspect.signature(fit).parameters
    takes_init, takes_rate, last = "init" in takes, "rate" in takes, {}

    def fit_score(points, fit_on, score_on, start=None, rate=None):
        X, y = data[fit_on] if fit_on in data else (torch.cat(pair) for pair in zip(data["train"], data["val"]))
        init = {}
        if start is not None and takes_init:
            heads = last["heads"]
            init = {"init": Heads(heads.weight[start], None if heads.bias is None else heads.bias[start])}
        if rate is not None and takes_rate:  # a head [C, D], [C] -> its score on `score_on`
            init["rate"] = lambda W, b: rate(Heads(W[None], b[None]).predict(data[score_on][0])[0])
        last["heads"] = heads = fit(X, y, num_classes=num_classes, points=points, device=device, **init)
        return heads.predict(data[score_on][0]), getattr(heads, "fits", None)

    return fit_score


def labels_of(data: Data) -> dict[str, torch.Tensor]:
    return {split: y for split, (_, y) in data.items()}


def select(fit: Callable, data: Data, *, params: dict, grid: dict[str, list], seeds: list[int], metric: str,
           num_classes: int, device, val_fraction: float, split_seed: int) -> dict:
    data = with_val(data, val_fraction=val_fraction, split_seed=split_seed)
    return {**choose(on_features(fit, data, num_classes=num_classes, device=device), labels_of(data),
                     params=params, grid=grid, seeds=seeds, metric=metric),
            "sizes": {"train": len(data["train"][1]), "val": len(data["val"][1]), "test": len(data["test"][1])}}


def reference(fit: Callable, data: Data, *, params: dict, seeds: list[int], metric: str, num_classes: int,
              device) -> dict:
    return {**fixed(on_features(fit, data, num_classes=num_classes, device=device), labels_of(data),
                    params=params, seeds=seeds, metric=metric),
            "sizes": {"train": len(data["train"][1]), "test": len(data["test"][1])}}


def augself(fit: Callable, data: Data, *, params: dict, grid: dict[str, list], seeds: list[int], metric: str,
            num_classes: int, device, split: str, warm_refit: bool, val_fraction: float = 0.1,
            split_seed: int = 0) -> dict:
    """AugSelf's linear evaluation on the splits its loaders made (`split`, applied by bench.cli through the
    dataset's loader; the record's `split_rule` says which): the selection rule (the first best point is
    AugSelf's `best_acc < acc`), the refit on train+val starting from the chosen point's heads when
    `warm_refit` and the method takes `init` (AugSelf refits its best classifier), test once."""
    data = with_val(data, val_fraction=val_fraction, split_seed=split_seed)
    warm = warm_refit and "init" in inspect.signature(fit).parameters
    return {**choose(on_features(fit, data, num_classes=num_classes, device=device), labels_of(data),
                     params=params, grid=grid, seeds=seeds, metric=metric, warm=warm_refit),
            "refit_start": "warm-started from the chosen point's heads" if warm else "from the method's own start",
            "sizes": {name: len(data[name][1]) for name in ("train", "val", "test")}}


PROTOCOLS = {"selection": select, "reference": reference, "augself": augself}
