"""One run of the benchmark, in plain Python: data -> features -> protocol -> record (DESIGN section 2)."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import re
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

from bench import UserError, backbones, features, locks, protocol, results, temps
from bench.config import validate
from bench.data import FeatureSet, Task, augself
from bench.report import stats

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r} is not supported; use auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but this machine has no usable GPU; use device=auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


@contextmanager
def timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def extract_all(config: dict, backbone, task: Task, device, timings: dict,
                fingerprints: dict[str, str]) -> tuple[dict, dict]:
    """Features of every split, through the cache; also the cache entries used."""
    data, entries = {}, {}
    for split, images in task.splits.items():
        with timed(timings, f"features_{split}"):
            X, y, entries[split] = features.cached(backbone, task.name, split, images,
                                                   cache_dir=Path(config["cache_dir"]), device=device,
                                                   fingerprint=fingerprints[split], **config["extract"])
        data[split] = (X, y)
    return data, entries


def check_images_method(config: dict, dataset: Task | FeatureSet) -> None:
    """Fine-tuning's own checks, before any work: it needs images and a protocol it knows."""
    from bench import finetune

    if isinstance(dataset, FeatureSet):
        raise UserError(f"method={config['method']['name']} trains on images; dataset={dataset.name} gives "
                        f"ready-made features")
    if config["protocol"]["name"] not in FINETUNE_RULES:
        raise UserError(f"method={config['method']['name']} runs under protocol "
                        f"{' or '.join(FINETUNE_RULES)}, not {config['protocol']['name']!r}")
    finetune.check(config["method"]["params"], config["method"]["grid"], config["finetune"])


FINETUNE_RULES = {"selection": protocol.choose, "reference": protocol.fixed}


def finetune_outcome(config: dict, backbone, task: Task, *, device, seeds: list[int], num_classes: int,
                     work_dir: Path, cost: dict) -> dict:
    """The protocol on images: every grid point (x seed) fine-tuned on train and scored on val, and so on."""
    from bench import finetune

    method, prot = config["method"], config["protocol"]
    fit_score, labels = finetune.learner(backbone=backbone, splits=task.splits, num_classes=num_classes,
                                         device=device, work_dir=work_dir, settings=config["finetune"],
                                         cost=cost, cache_dir=Path(config["cache_dir"]).expanduser())
    grid = {"grid": method["grid"]} if prot["name"] == "selection" else {}
    outcome = FINETUNE_RULES[prot["name"]](fit_score, labels, params=method["params"], seeds=seeds,
                                           metric=config["dataset"]["metric"], **grid)
    return {**outcome, "sizes": {name: len(split) for name, split in task.splits.items()
                                 if name in labels and (name != "val" or prot["name"] == "selection")}}


def cost_record(device, timings: dict, entries: dict, stages: dict) -> dict:
    """Wall seconds and images per stage, peak accelerator memory and the device (DESIGN section 7).
    A feature split's `extraction_seconds` is what its cache entry cost when it was made, whichever run
    paid it (`cached`): the table can share it among the runs that used the entry."""
    cost = {"device": str(device), "accelerator": None, "peak_accelerator_memory_bytes": None,
            "stages": {"backbone": {"seconds": timings.get("backbone"), "images": 0}}}
    for split, info in entries.items():
        cost["stages"][f"extract_{split}"] = {
            "seconds": timings.get(f"features_{split}"), "images": 0 if info["hit"] else info["images"],
            "cached": info["hit"], "extraction_seconds": info.get("extraction_seconds"),
            "extraction_images": info["images"], "key": info["key"]}
    cost["stages"] |= stages or {"fit": {"seconds": timings.get("fit"), "images": 0}}
    if device.type == "cuda":
        cost["accelerator"] = torch.cuda.get_device_name(device)
        cost["peak_accelerator_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return cost


def precision(device: torch.device, amp: bool = True) -> dict:
    """What the device changes in the numbers: a GPU extracts under float16 autocast, a CPU in float32, and
    each method picks its fitting precision from the device type and the problem's size (bench.methods.linear:
    float32 on a GPU), so the device type, with the data the signature also covers, decides every precision.
    `amp` false (extract.amp) extracts in float32 on a GPU too."""
    return {"device": device.type, "extract": "float16 autocast" if features.uses_amp(device, amp) else "float32"}


def identity(config: dict, dataset_name: str, splits: dict, weights_sha256: str | None,
             device: torch.device) -> tuple[str, Path]:
    """(signature, record path) of a run: its configs, split fingerprints, weights and device precision."""
    sig = results.signature(config, {**splits, "weights": weights_sha256},
                            precision(device, config["extract"].get("amp", True)))
    path = results.path_for(config["results_dir"], dataset=dataset_name, backbone=config["backbone"]["name"],
                            method=config["method"]["name"], protocol=config["protocol"]["name"], sig=sig)
    return sig, path


FINGERPRINTS = ("stat", "content")  # `fingerprint=`: what a split's fingerprint covers (ImageList.fingerprint)


def fingerprints(config: dict, task: Task) -> dict[str, str]:
    """Each split's fingerprint: items, labels and each file's size and mtime, or its bytes (fingerprint=content)."""
    content = config.get("fingerprint", "stat") == "content"
    return {name: split.fingerprint(content=content) for name, split in task.splits.items()}


def load_dataset(config: dict) -> Task | FeatureSet:
    """The dataset of a plain config, loaded by its loader (`dataset.load._target_`) as `seabench run` loads it."""
    from bench.data.augself import loader_options

    spec = dict(config["dataset"]["load"])
    module, _, name = spec.pop("_target_").rpartition(".")
    extra = loader_options(config["dataset"], config["protocol"].get("split", "canonical"))
    return getattr(importlib.import_module(module), name)(root=Path(config["data_root"]).expanduser().resolve(),
                                                          **spec, **extra)


def splits_now(config: dict) -> dict[str, str]:
    """The split fingerprints a run of `config` would sign now."""
    dataset = load_dataset(config)
    return dict(dataset.hashes) if isinstance(dataset, FeatureSet) else fingerprints(config, dataset)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    from bench import fetch

    return fetch.digests(Path(path))["sha256"]


def weights_file_now(backbone: dict, cache_dir: str) -> str | None:
    """The sha256 of the file a `source: checkpoint` backbone loads, when it is on disk (else None)."""
    if backbone.get("source") != "checkpoint":
        return None
    if backbone.get("checkpoint"):
        path = Path(backbone["checkpoint"]).expanduser()
    elif backbone.get("file"):
        path = backbones.checkpoint_path(cache_dir=Path(cache_dir), file=backbone["file"])
    else:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def checker(*, remote: bool = False):
    """`stale(config, record)`: why `record` (of this config's cell) is not what a run of `config` would sign
    now, else None: its data changed (a split's fingerprint), its weights file changed, or another device
    made it. As cheap as a signature gets without a model: the images are stat'ed (hashed with
    fingerprint=content), each dataset loaded and each checkpoint file hashed once per checker (a sweep's
    cells share them), no network built. `remote`: the jobs run elsewhere (Slurm), so with device=auto
    this machine cannot tell their device. `stale` raises UserError when the data cannot be read."""
    memo: dict[str, dict] = {}

    def stale(config: dict, record: dict) -> str | None:
        data = {k: config[k] for k in ("dataset", "protocol", "data_root")} | {"fingerprint": config.get("fingerprint")}
        facts = json.dumps(data, sort_keys=True, default=str)
        if facts not in memo:
            memo[facts] = splits_now(config)
        return difference(config, record, memo[facts], remote=remote)

    return stale


def difference(config: dict, record: dict, splits: dict[str, str], *, remote: bool) -> str | None:
    """What of the signature differs between `record` and a run of `config` on data of these `splits`."""
    if changed := sorted(k for k in set(splits) | set(record.get("splits") or {})
                         if splits.get(k) != (record.get("splits") or {}).get(k)):
        return f"its data changed since (split {', '.join(changed)})"
    before = (record.get("checkpoint") or {}).get("file_sha256")
    now = weights_file_now(config["backbone"], config["cache_dir"])
    if before and now and before != now:
        return f"its weights file changed since (sha256 {before[:12]} then, {now[:12]} now)"
    if remote and config["device"] == "auto":
        return None
    here = precision(pick_device(config["device"]), config["extract"].get("amp", True))
    if record.get("precision") != here:
        then = record.get("precision") or {}
        return f"it was made on {then.get('device')} ({then.get('extract')}), a run now uses {here['device']}"
    return None


def sized_to_data(preprocess: dict, images, probe: int = 32) -> dict:
    """`preprocess` with a null `resize`/`crop` set from the data: the shorter side of the first train image
    (how `backbone=pixels` takes the size of whatever images it is given); a null `channels` (pixels' own) is
    1 when the first `probe` train images are gray (R = G = B: readers hand every image over as RGB), else 3."""
    sized = dict(preprocess)
    if preprocess.get("resize") is None or preprocess.get("crop") is None:
        width, height = images.read(images.items[0]).size
        side = min(width, height)
        sized.update(resize=preprocess["resize"] or side, crop=preprocess["crop"] or side)
        log.info("preprocess: shorter side to %d, center crop %dx%d (resize/crop null: the first train image is "
                 "%dx%d)", sized["resize"], sized["crop"], sized["crop"], width, height)
    if "channels" in preprocess and preprocess["channels"] is None:
        firsts = images.items[:probe]
        gray = all(_gray(images.read(item)) for item in firsts)
        sized["channels"] = 1 if gray else 3
        log.info("preprocess: %d channel%s per pixel (channels null: the first %d train images are %s), %d features",
                 sized["channels"], "" if gray else "s", len(firsts), "gray (R = G = B)" if gray else "in colour",
                 sized["channels"] * sized["crop"] ** 2)
    return preprocess if sized == preprocess else sized


def _gray(image) -> bool:
    """Whether an image's three channels hold the same values."""
    r, g, b = (band.tobytes() for band in image.convert("RGB").split())
    return r == g == b


def run(config: dict, dataset: Task | FeatureSet, *, backbone_overrides: list[str] = ()) -> Path | None:
    """Run the cell `config` describes on `dataset`; return its record's path (None when skipped).

    The signature covers the configs, the split fingerprints, the backbone's weight hash and the device's
    precision, so a changed checkpoint behind the same path, or the same cell on a GPU, is a new run, not
    a skipped one. `backbone_overrides` (what the command line changed in the backbone's config, e.g.
    `preprocess.resize=28`) go into the record, so the table can tell such rows apart."""
    validate(config)
    images = config["method"].get("inputs") == "images"  # fine-tuning: trains on images, extracts nothing
    if images:
        check_images_method(config, dataset)
    device, timings, weights, cell = pick_device(config["device"]), {}, {}, results.cell_key(config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if isinstance(dataset, FeatureSet):  # ready-made features: no backbone takes part
        config = {**config, "backbone": {"name": "given", "label": "given features"}}
        splits, num_classes = dict(dataset.hashes), dataset.num_classes
    else:
        temps.check_writable(Path(config["cache_dir"]), "cache_dir")
        splits, num_classes = fingerprints(config, dataset), len(dataset.classes)
        preprocess = sized_to_data(config["backbone"]["preprocess"], dataset.splits["train"])
        with timed(timings, "backbone"):
            backbone = backbones.create(**{**config["backbone"], "preprocess": preprocess},
                                        cache_dir=Path(config["cache_dir"]))
        weights = {"weights_sha256": backbone.weights_sha256, "preprocess": backbone.preprocess,
                   "checkpoint": backbone.provenance}
    method, prot = config["method"], config["protocol"]
    sig, path = identity(config, dataset.name, splits, weights.get("weights_sha256"), device)
    if reusable(path, config):
        return None
    # the cell is claimed (a lease on `<record>.claim` with this job's pid and host, renewed while it runs): an
    # identical run started meanwhile waits, then reuses the record; a claim whose owner died is taken over
    temps.make_dir(path.parent, "results folder")
    with locks.hold(f"{path}.claim", stale_s=config["extract"].get("lock_stale_s", 120.0),
                       what=f"the run of this cell ({path.name})"):
        if reusable(path, config, waited=True):
            return None
        data, entries = (dataset.splits, {}) if isinstance(dataset, FeatureSet) else \
            ({}, {}) if images else extract_all(config, backbone, dataset, device, timings, splits)
        seeds = list(range(config["seeds"])) if method["stochastic"] else [0]
        options = {k: v for k, v in prot.items() if k != "name"}
        if prot["name"] in ("selection", "augself"):
            options["grid"] = method["grid"]
        work_dir, stages, costs = Path(config["cache_dir"]).expanduser() / "finetune" / sig[:24], {}, {}
        with timed(timings, "fit"):
            if images:
                outcome = finetune_outcome(config, backbone, dataset, device=device, seeds=seeds,
                                           num_classes=num_classes, work_dir=work_dir, cost=stages)
            else:
                fit, costs = method_fit(method["module"], cache_dir=Path(config["cache_dir"]))
                outcome = protocol.PROTOCOLS[prot["name"]](
                    fit, data, params=method["params"], seeds=seeds,
                    metric=config["dataset"]["metric"], num_classes=num_classes, device=device, **options)
                timings.update(costs.pop("timings", {}))  # parts of the fit a method times itself (a flow's fit)
        record = {"protocol_version": protocol.VERSION, "signature": sig, "cell": cell, "config": config,
                  "dataset": dataset.name,
                  "backbone": config["backbone"]["name"], "backbone_label": config["backbone"].get("label"),
                  "method": method["name"], "protocol": prot["name"], "metric": config["dataset"]["metric"],
                  "backbone_overrides": list(backbone_overrides), "num_classes": num_classes, "splits": splits,
                  "features": entries, **weights, **outcome, "warnings": list(dataset.warnings),
                  **({"method_costs": costs} if costs else {}),
                  "split_rule": augself.rule(dataset.name) if prot.get("split") == "augself" else "canonical",
                  "timings": timings, "device": str(device),
                  "precision": precision(device, config["extract"].get("amp", True)),
                  "provenance": results.provenance(device) | {"numerics": numerics(device)},
                  "cost": cost_record(device, timings, entries, stages.get("stages")),
                  **({"finetune_runs": stages.get("runs", [])} if images else {}),
                  "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}  # orders a cell's records
        results.write(path, record)
        if images:
            from bench import finetune

            finetune.clean(work_dir, keep=config["finetune"]["keep_checkpoints"])
        report(record, path)
        return path


def reusable(path: Path, config: dict, waited: bool = False) -> bool:
    """Whether the cell's record at `path` is there to reuse (skip_existing); one that cannot be used is set
    aside (named, kept as <name>.damaged) and the cell runs again."""
    if not (config["skip_existing"] and path.exists()):
        return False
    _, problem = results.read(path)
    if problem is None:
        log.info("skipping: %s record of this run exists at %s",
                 "while this job waited for the cell, another wrote a" if waited else "a", path)
        return True
    temps.set_aside(path, problem, "record", "running the cell again")
    return False


def method_fit(module: str, *, cache_dir: Path):
    """The method's `fit`, given the optional keywords it takes: `cache_dir` (where it may cache what it
    fits, e.g. a flow) and `costs` (a dict it fills with notes on its own work); also that dict."""
    fit, costs = importlib.import_module(module).fit, {}
    accepted = inspect.signature(fit).parameters
    extra = {"cache_dir": cache_dir, "costs": costs}
    return partial(fit, **{k: v for k, v in extra.items() if k in accepted}), costs


def numerics(device: torch.device) -> dict:
    """What makes the same run's numbers differ between machines (the table prints it): torch's intra-op
    thread count (how a reduction is split, so the order of its sums), the BLAS torch was built with and the
    CPU's vector instructions torch dispatches to."""
    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    return {"threads": torch.get_num_threads(), "blas": blas.group(1) if blas else None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": device.type}


def report(record: dict, path: Path) -> None:
    """One line per run; ± as in the table: half of the 95% Student-t interval of the mean over seeds."""
    scores = record["test"]["score"]
    ci = stats.interval(scores)
    spread = f" ± {(ci[1] - ci[0]) / 2:.2f} (95% interval)" if ci else ""
    log.info("%s / %s / %s: test %s %.2f%s over %d seed(s), chose %s -> %s", record["dataset"],
             record["backbone_label"] or record["backbone"], record["method"], record["metric"],
             sum(scores) / len(scores), spread, len(scores), record["chosen"] or "fixed params", path)
