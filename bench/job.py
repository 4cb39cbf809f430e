"""One run of the benchmark, in plain Python: data -> features -> protocol -> record (DESIGN section 2)."""

from __future__ import annotations

import importlib
import logging
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import UserError, backbones, features, protocol, results
from bench.data import FeatureSet, Task

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextmanager
def timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def extract_all(config: dict, task: Task, device, timings: dict) -> tuple[dict, dict, dict]:
    """Features of every split through the cache; also the backbone's facts and the cache entries."""
    with timed(timings, "backbone"):
        backbone = backbones.create(**config["backbone"], cache_dir=Path(config["cache_dir"]))
    data, entries = {}, {}
    for split, images in task.splits.items():
        with timed(timings, f"features_{split}"):
            X, y, entries[split] = features.cached(backbone, task.name, split, images,
                                                   cache_dir=Path(config["cache_dir"]), device=device,
                                                   **config["extract"])
        if not torch.isfinite(X).all():
            raise UserError(f"backbone {backbone.name} gave NaN or infinite features on {task.name}/{split}")
        data[split] = (X, y)
    return data, entries, {"weights_sha256": backbone.weights_sha256, "preprocess": backbone.preprocess,
                           "checkpoint": backbone.provenance}


def run(config: dict, dataset: Task | FeatureSet) -> Path | None:
    """Run the cell `config` describes on `dataset`; return its record's path (None when skipped)."""
    given = isinstance(dataset, FeatureSet)
    if given:  # ready-made features: no backbone takes part
        config = {**config, "backbone": {"name": "given", "label": "given features"}}
        splits = dict(dataset.hashes)
    else:
        splits = {name: images.fingerprint() for name, images in dataset.splits.items()}
    method, prot = config["method"], config["protocol"]
    sig = results.signature(config, splits)
    path = results.path_for(config["results_dir"], dataset=dataset.name, backbone=config["backbone"]["name"],
                            method=method["name"], protocol=prot["name"], sig=sig)
    if path.exists() and config["skip_existing"]:
        log.info("skipping: a record of this run exists at %s", path)
        return None
    device, timings = pick_device(config["device"]), {}
    if given:
        data, entries, weights = dataset.splits, {}, {}
        num_classes = dataset.num_classes
    else:
        data, entries, weights = extract_all(config, dataset, device, timings)
        num_classes = len(dataset.classes)
    fit = importlib.import_module(method["module"]).fit
    seeds = list(range(config["seeds"])) if method["stochastic"] else [0]
    options = {k: v for k, v in prot.items() if k != "name"}
    grid = {"grid": method["grid"]} if prot["name"] == "selection" else {}
    with timed(timings, "fit"):
        outcome = protocol.PROTOCOLS[prot["name"]](
            fit, data, params=method["params"], seeds=seeds, metric=config["dataset"]["metric"],
            num_classes=num_classes, device=device, **grid, **options)
    record = {"protocol_version": protocol.VERSION, "signature": sig, "config": config,
              "dataset": dataset.name, "backbone": config["backbone"]["name"],
              "backbone_label": config["backbone"].get("label", config["backbone"]["name"]),
              "method": method["name"], "protocol": prot["name"], "metric": config["dataset"]["metric"],
              "num_classes": num_classes, "splits": splits, "features": entries, **weights, **outcome,
              "timings": timings, "device": str(device), "provenance": results.provenance(),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results.write(path, record)
    scores = torch.tensor(outcome["test"]["score"])
    log.info("%s / %s / %s: test %s %.2f ± %.2f over %d seed(s), chose %s -> %s", dataset.name,
             record["backbone_label"], method["name"], record["metric"], scores.mean(),
             scores.std() if len(scores) > 1 else 0.0, len(scores), outcome["chosen"] or "fixed params", path)
    return path
