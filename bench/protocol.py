"""The evaluation protocol (DESIGN section 3). Test scores are computed once, after every choice is made.

`select`: every grid point (x every seed) is fitted on train and scored on val with the dataset's
metric (mean over seeds, in float64); the best point (ties: the earlier one) is refitted on
train+val, starting from the heads validated at that point when the method takes `init`, and
scored on test once. A pick on the edge of its grid is flagged; so is a fit that stopped at its
iteration limit (methods that say how their fits ended).
`reference`: fixed hyperparameters, fit on train, score on test once (the SeA reference code's setting).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable

import torch

from bench import UserError
from bench.data.splits import carve
from bench.methods import Heads
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


def test_scores(heads, X, y, metric: str) -> dict[str, list[float]]:
    pred = heads.predict(X)
    return {"score": [score(metric, p, y) for p in pred], "top1": [top1(p, y) for p in pred],
            "mean_per_class": [mean_per_class(p, y) for p in pred]}


def fits(heads, rows) -> list[dict] | None:
    """How the fits of heads `rows` ended, for methods that say so (`Heads.fits`), else None."""
    return None if heads.fits is None else [heads.fits[r] for r in rows]


def max_iter_hit(curve: list[dict], final: list[dict] | None, name: str) -> list:
    """The grid points (and `name`, for the fit scored on test) one of whose fits stopped at max_iter."""
    def hit(ends):
        return any(f["stop"] == "max_iter" for f in ends or [])

    flagged = [c["point"] for c in curve if hit(c.get("fit"))] + ([name] if hit(final) else [])
    if flagged:
        log.warning("fits stopped at their iteration limit (max_iter), not converged: %s", flagged)
    return flagged


def warm_start(fit: Callable, heads, rows) -> dict:
    """{"init": heads `rows`} for a method whose `fit` takes `init` (the refit then starts where the
    chosen point was validated), else {}."""
    if "init" not in inspect.signature(fit).parameters:
        return {}
    return {"init": Heads(heads.weight[rows], None if heads.bias is None else heads.bias[rows])}


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


def select(fit: Callable, data: Data, *, params: dict, grid: dict[str, list], seeds: list[int], metric: str,
           num_classes: int, device, val_fraction: float, split_seed: int) -> dict:
    if unknown := set(grid) - set(params):
        raise UserError(f"grid keys {sorted(unknown)} are not hyperparameters of this method; "
                        f"known: {sorted(params)}")
    data = with_val(data, val_fraction=val_fraction, split_seed=split_seed)
    combos = grid_points(grid)
    points = [{**params, **combo, "seed": s} for combo in combos for s in seeds]
    fitted = fit(*data["train"], num_classes=num_classes, points=points, device=device)
    pred = fitted.predict(data["val"][0])
    val = torch.tensor([score(metric, p, data["val"][1]) for p in pred], dtype=torch.float64)
    val = val.view(len(combos), len(seeds))
    # in float64 over the sorted scores: equal per-seed scores in another order give the same mean, to the
    # last bit (a float32 mean, or any mean in another order, can differ there and break a tie)
    best = int(val.sort(1).values.mean(1).argmax())  # argmax returns the first maximum: ties go to the earlier
    chosen, k = combos[best], len(seeds)
    Xtv, ytv = (torch.cat(pair) for pair in zip(data["train"], data["val"]))
    heads = fit(Xtv, ytv, num_classes=num_classes, points=[{**params, **chosen, "seed": s} for s in seeds],
                device=device, **warm_start(fit, fitted, list(range(best * k, best * k + k))))
    curve = [{"point": c, "val": v.sort().values.mean().item(), "val_per_seed": v.tolist()}
             for c, v in zip(combos, val)]
    if fitted.fits is not None:
        for i, entry in enumerate(curve):
            entry["fit"] = fits(fitted, range(i * k, i * k + k))
    refit = fits(heads, range(k))
    return {"chosen": chosen, "edge": edges(grid, chosen), "params": {**params, **chosen}, "curve": curve,
            **({"refit": refit} if refit else {}), "max_iter_hit": max_iter_hit(curve, refit, "refit"),
            "test": test_scores(heads, *data["test"], metric), "seeds": seeds,
            "sizes": {"train": len(data["train"][1]), "val": len(data["val"][1]), "test": len(data["test"][1])}}


def reference(fit: Callable, data: Data, *, params: dict, seeds: list[int], metric: str, num_classes: int,
              device) -> dict:
    heads = fit(*data["train"], num_classes=num_classes, points=[{**params, "seed": s} for s in seeds],
                device=device)
    final = fits(heads, range(len(seeds)))
    return {"chosen": {}, "edge": {}, "params": params, "curve": [], "seeds": seeds,
            **({"fit": final} if final else {}), "max_iter_hit": max_iter_hit([], final, "fit"),
            "test": test_scores(heads, *data["test"], metric),
            "sizes": {"train": len(data["train"][1]), "test": len(data["test"][1])}}


PROTOCOLS = {"selection": select, "reference": reference}
