"""Fine-tuning (`method=finetune`): backbone + linear head trained end to end on the images, with the
auxiliary losses that bring ISDA, A-FAN and AugSelf in their native end-to-end form (isda.py, afan.py,
augself.py), and the flow seed's latent perturbations of each batch (method=finetune_flow: glow.py the
Glow, glows.py its training and cache, perturbation.py the perturbations). The protocol drives it through
the same rules as the feature methods (bench.protocol.choose / fixed): `learner` is its `fit_score`.

Every training run (one grid point and seed, on one split) lives in its own folder under the job's work
folder, named by the hash of its complete hyperparameters: its checkpoint while it trains, then its
predictions on the scored split. A job started again with the same command skips the finished runs and
resumes the unfinished one from its last checkpoint.

Fine-tuning trains a backbone on a split's images: this package may import bench.backbones, bench.data,
bench.temps (its checkpoints) and itself, never the features, the feature methods, protocol, records,
config, sweep, report or CLI (bench.job hands it everything it needs).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch
from filelock import FileLock
from torch.utils.data import ConcatDataset

from bench import UserError, digest
from bench.backbones import Backbone
from bench.data import ImageList
from bench.finetune import checkpoint, glows, isda, loop, perturbation
from bench.finetune.net import Net, predict

log = logging.getLogger(__name__)

GRID_KEYS = ("lr", "lr_weight_decay", "seed", "mode", "eps")  # what a training run of the record is named by
# (mode, eps: method=finetune_flow's)


def check(params: dict, grid: dict, settings: dict) -> None:
    """One sentence for settings that would fail only after minutes of training."""
    for key in ("steps", "batch_size"):
        if not isinstance(params[key], int) or params[key] < 1:
            raise UserError(f"method.params.{key} must be a positive integer, not {params[key]!r}")
    for key in ("micro_batch", "checkpoint_every", "eval_batch_size"):
        value = settings[key]
        if not (value is None and key == "micro_batch") and (not isinstance(value, int) or value < 1):
            raise UserError(f"finetune.{key} must be a positive integer, not {value!r}")
    lrs = [params["lr"], *grid.get("lr", [])]
    if not all(isinstance(lr, (int, float)) and lr > 0 for lr in lrs):
        raise UserError(f"learning rates must be positive numbers, not {lrs}")
    v = params["views"]
    if v["count"] not in (1, 2) or not all(isinstance(v[k], (int, float)) and 0 <= v[k] <= 1
                                           for k in ("grayscale", "blur")):
        raise UserError(f"method.params.views: count must be 1 or 2 and grayscale, blur probabilities in [0, 1], "
                        f"not {v['count']!r}, {v['grayscale']!r}, {v['blur']!r}")
    if params["augself"]["enabled"] and (v["count"] != 2 or not v["jitter"]):
        raise UserError("method.params.augself needs two jittered views: views.count 2 and a views.jitter "
                        "(as method=finetune_augself sets)")
    reinject = params["afan"]["reinject"]
    if params["afan"]["enabled"] and (not isinstance(reinject, int) or isinstance(reinject, bool) or reinject < 0):
        raise UserError(f"method.params.afan.reinject must be a whole number of strengths (0 = off), not {reinject!r}")
    if params["isda"]["enabled"] and params["isda"]["cov"] not in isda.COVS:
        raise UserError(f"method.params.isda.cov must be one of {isda.COVS}, not {params['isda']['cov']!r}")
    if "glow" in params:  # method=finetune_flow
        glows.check(params["glow"])
        perturbation.check(params, grid)


def network(backbone: Backbone, params: dict, *, num_classes: int, seed: int) -> Net:
    dim = backbone.model.num_features if hasattr(backbone.model, "num_features") else None
    if dim is None:
        raise UserError(f"backbone {backbone.name} cannot be fine-tuned: it is no timm network")
    a, s, i = params["afan"], params["augself"], params["isda"]
    return Net(backbone.model, dim=dim, num_classes=num_classes, seed=seed,
               afan_stage=a["stage"] if a["enabled"] else None,
               augself_weights=s["weights"] if s["enabled"] else None, augself_hidden=s["hidden"],
               isda_cov=i["cov"] if i["enabled"] else None)


def learner(*, backbone: Backbone, splits: dict[str, ImageList], num_classes: int, device: torch.device,
            work_dir: Path, settings: dict, cost: dict, cache_dir: Path | None = None):
    """`fit_score(points, fit_on, score_on)` for bench.protocol, and the labels of the splits.

    `settings`: micro_batch, num_workers, checkpoint_every, compile, eval_batch_size (the unsigned
    `finetune` block of the config: they change how fast, not what). `cost` collects per stage the wall
    seconds, images and steps (and, for method=finetune_flow, the Glow's note under cost["stages"]["glow"]).
    `cache_dir`: where trained Glows are kept (method=finetune_flow)."""
    images = {**splits, "train+val": ConcatDataset([splits["train"], splits["val"]])}
    trained = {}  # the Glows of this job, by their settings: trained on the train split (bits/dim on val)

    def fit_score(points: list[dict], fit_on: str, score_on: str, start=None, rate=None) -> tuple[torch.Tensor, None]:
        # `start` and `rate` are ignored: each run starts from the backbone's weights and a fresh head, and
        # every point is trained
        preds = []
        for k, point in enumerate(points):
            folder = work_dir / f"{fit_on}-{digest(point)[:16]}"
            done = folder / f"predictions-{score_on}.pt"
            desc = f"finetune {fit_on} {k + 1}/{len(points)} lr={point['lr']:g} seed={point['seed']}"
            folder.mkdir(parents=True, exist_ok=True)
            with FileLock(str(folder / "lock")):  # a second job on the same cell waits, then reads the result
                result = checkpoint.load(done)
                if result is None:
                    result = run(point, images[fit_on], splits[score_on], folder=folder, desc=desc)
                    checkpoint.save(done, result)
                    if not settings["keep_checkpoints"]:
                        (folder / "checkpoint.pt").unlink(missing_ok=True)
                else:
                    log.info("%s: finished earlier, predictions read from %s", desc, done)
            add(cost, f"fit_{fit_on}", result["train"])
            add(cost, f"predict_{score_on}", result["predict"])
            cost.setdefault("runs", []).append({"fit_on": fit_on, "score_on": score_on,
                                                **{key: point[key] for key in GRID_KEYS if key in point},
                                                "seconds": result["train"]["seconds"],
                                                "finite": result["train"]["finite"],
                                                **({"isda_cov": result["train"]["isda_cov"]}
                                                   if "isda_cov" in result["train"] else {})})
            preds.append(result["pred"])
        return torch.stack(preds), None

    def run(point: dict, train: ImageList, scored: ImageList, *, folder: Path, desc: str) -> dict:
        net = network(backbone, point, num_classes=num_classes, seed=point["seed"])
        spent = loop.train(net, train, point=point, preprocess=backbone.preprocess, device=device,
                           path=folder / "checkpoint.pt", micro_batch=settings["micro_batch"],
                           num_workers=settings["num_workers"], checkpoint_every=settings["checkpoint_every"],
                           compile=settings["compile"], desc=desc, perturb=hook(point))
        start = time.perf_counter()
        pred = predict(net, scored.with_transform(backbone.transform), batch_size=settings["eval_batch_size"],
                       num_workers=settings["num_workers"], device=device, amp=loop.autocast_ok(device),
                       desc=f"{desc} predict")
        if net.estimator is not None:
            spent["isda_cov"] = net.estimator.kind  # what cov=auto became
        return {"pred": pred, "train": spent,
                "predict": {"seconds": round(time.perf_counter() - start, 3), "images": len(scored)}}

    def hook(point: dict):
        """method=finetune_flow: the latent perturbation of each batch, with the Glow trained once per job."""
        if "glow" not in point:
            return None
        name = digest(point["glow"])
        if name not in trained:
            if cache_dir is None:
                raise UserError("method=finetune_flow needs a cache_dir for its Glow")
            trained[name], note = glows.trained(splits["train"], splits.get("val"), settings=point["glow"],
                                                cache_dir=cache_dir, device=device,
                                                checkpoint_every=settings["checkpoint_every"],
                                                num_workers=settings["num_workers"])
            cost.setdefault("stages", {})["glow"] = note
        return perturbation.Latent(trained[name], point=point, preprocess=backbone.preprocess,
                                   amp=loop.autocast_ok(device))

    return fit_score, {name: torch.tensor(s.labels) for name, s in splits.items()}


def add(cost: dict, stage: str, spent: dict) -> None:
    into = cost.setdefault("stages", {}).setdefault(stage, {})
    for key, value in spent.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            into[key] = round(into.get(key, 0) + value, 3)


def clean(work_dir: Path, *, keep: bool) -> None:
    """After the record is written: remove the job's work folder (unless its checkpoints are to be kept)."""
    if not keep:
        shutil.rmtree(work_dir, ignore_errors=True)
