"""One run of the benchmark, in plain Python: data -> features -> protocol -> record (DESIGN section 2)."""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

from bench import UserError, backbones, features, protocol, results
from bench.data import FeatureSet, Task
from bench.metrics import METRICS

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but this machine has no usable GPU; use device=auto")
    return device


def validate(config: dict) -> None:
    """Check what would otherwise fail deep inside a run, or only after all its work."""
    metric, method = config["dataset"]["metric"], config["method"]
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r} for dataset {config['dataset']['name']}; known: {sorted(METRICS)}")
    for key, values in method["grid"].items():
        if not isinstance(values, list) or not values:
            raise UserError(f"method.grid.{key} must be a non-empty list (e.g. method.grid.{key}=[{values}])")
    if not isinstance(config["seeds"], int) or config["seeds"] < 1:
        raise UserError(f"seeds must be a positive integer, not {config['seeds']!r}")


@contextmanager
def timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def extract_all(config: dict, backbone, task: Task, device, timings: dict) -> tuple[dict, dict]:
    """Features of every split, through the cache; also the cache entries used."""
    data, entries = {}, {}
    for split, images in task.splits.items():
        with timed(timings, f"features_{split}"):
            X, y, entries[split] = features.cached(backbone, task.name, split, images,
                                                   cache_dir=Path(config["cache_dir"]), device=device,
                                                   **config["extract"])
        if not torch.isfinite(X).all():
            raise UserError(f"backbone {backbone.name} gave NaN or infinite features on {task.name}/{split}")
        data[split] = (X, y)
    return data, entries


def run(config: dict, dataset: Task | FeatureSet) -> Path | None:
    """Run the cell `config` describes on `dataset`; return its record's path (None when skipped).

    The signature covers the configs, the split fingerprints and the backbone's weight hash, so a
    changed checkpoint behind the same path is a new run, not a skipped one."""
    validate(config)
    device, timings, weights = pick_device(config["device"]), {}, {}
    if isinstance(dataset, FeatureSet):  # ready-made features: no backbone takes part
        config = {**config, "backbone": {"name": "given", "label": "given features"}}
        splits, num_classes = dict(dataset.hashes), dataset.num_classes
    else:
        splits, num_classes = {name: s.fingerprint() for name, s in dataset.splits.items()}, len(dataset.classes)
        with timed(timings, "backbone"):
            backbone = backbones.create(**config["backbone"], cache_dir=Path(config["cache_dir"]))
        weights = {"weights_sha256": backbone.weights_sha256, "preprocess": backbone.preprocess,
                   "checkpoint": backbone.provenance}
    method, prot = config["method"], config["protocol"]
    sig = results.signature(config, {**splits, "weights": weights.get("weights_sha256")})
    path = results.path_for(config["results_dir"], dataset=dataset.name, backbone=config["backbone"]["name"],
                            method=method["name"], protocol=prot["name"], sig=sig)
    if path.exists() and config["skip_existing"]:
        log.info("skipping: a record of this run exists at %s", path)
        return None
    data, entries = (dataset.splits, {}) if isinstance(dataset, FeatureSet) else \
        extract_all(config, backbone, dataset, device, timings)
    seeds = list(range(config["seeds"])) if method["stochastic"] else [0]
    options = {k: v for k, v in prot.items() if k != "name"}
    if prot["name"] == "selection":
        options["grid"] = method["grid"]
    fit, costs = method_fit(method["module"], cache_dir=Path(config["cache_dir"]))
    with timed(timings, "fit"):
        outcome = protocol.PROTOCOLS[prot["name"]](
            fit, data, params=method["params"], seeds=seeds,
            metric=config["dataset"]["metric"], num_classes=num_classes, device=device, **options)
    timings.update(costs.pop("timings", {}))  # parts of the fit a method times itself (a flow's fit)
    record = {"protocol_version": protocol.VERSION, "signature": sig, "config": config, "dataset": dataset.name,
              "backbone": config["backbone"]["name"], "backbone_label": config["backbone"].get("label"),
              "method": method["name"], "protocol": prot["name"], "metric": config["dataset"]["metric"],
              "num_classes": num_classes, "splits": splits, "features": entries, **weights, **outcome,
              **({"method_costs": costs} if costs else {}),
              "timings": timings, "device": str(device), "provenance": results.provenance(device),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results.write(path, record)
    report(record, path)
    return path


def method_fit(module: str, *, cache_dir: Path):
    """The method's `fit`, given the optional keywords it takes: `cache_dir` (where it may cache what it
    fits, e.g. a flow) and `costs` (a dict it fills with notes on its own work); also that dict."""
    fit, costs = importlib.import_module(module).fit, {}
    accepted = inspect.signature(fit).parameters
    extra = {"cache_dir": cache_dir, "costs": costs}
    return partial(fit, **{k: v for k, v in extra.items() if k in accepted}), costs


def report(record: dict, path: Path) -> None:
    scores = torch.tensor(record["test"]["score"])
    log.info("%s / %s / %s: test %s %.2f ± %.2f over %d seed(s), chose %s -> %s", record["dataset"],
             record["backbone_label"] or record["backbone"], record["method"], record["metric"], scores.mean(),
             scores.std() if len(scores) > 1 else 0.0, len(scores), record["chosen"] or "fixed params", path)
