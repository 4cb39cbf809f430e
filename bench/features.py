"""Feature extraction, once per (weights, preprocessing, dataset, split), into an on-disk cache.

An entry's key is the sha256 of everything that changes the features: the backbone's weight hash
and architecture, its preprocessing, the dataset and the split's (item, label) fingerprint. Entries
are written under a temporary name and renamed, under a file lock, so a killed job never leaves a
corrupt entry and concurrent jobs on the same cell extract once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import time
from pathlib import Path

import torch
from filelock import FileLock
from tqdm import tqdm

from bench import UserError
from bench.backbones import Backbone
from bench.data import ImageList

log = logging.getLogger(__name__)

VERSION = 1  # bump when extraction itself changes (pooling, dtype ...): it is part of every key


def key(backbone: Backbone, dataset: str, split: ImageList, *, amp: bool) -> str:
    facts = {"version": VERSION, "weights": backbone.weights_sha256, "model": type(backbone.model).__name__,
             "preprocess": backbone.preprocess, "dataset": dataset, "split": split.fingerprint(),
             "source": split.source, "amp": amp}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def extract(model: torch.nn.Module, images: ImageList, *, batch_size: int, num_workers: int,
            device: torch.device, desc: str = "extract") -> torch.Tensor:
    """Features [N, D] (float32, on the CPU) of every image, in order."""
    cuda = device.type == "cuda"
    model = model.to(device).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=cuda, persistent_workers=False)
    chunks = []
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            for x, _ in tqdm(loader, desc=desc, unit="batch", disable=None):
                x = x.to(device, non_blocking=True)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                chunks.append(model(x).float().flatten(1).cpu())
    except UserError as err:
        # an error raised in a loader worker arrives wrapped in its traceback: keep its last line
        raise UserError(re.sub(r"^\S*UserError: ", "", str(err).strip().splitlines()[-1])) from None
    if not chunks:
        raise UserError(f"{desc}: the split is empty")
    return torch.cat(chunks)


def load_entry(path: Path, digest: str) -> dict | None:
    """The entry at `path`, or None when there is none or it is damaged (then it is removed)."""
    if not path.exists():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(entry, dict) and entry.get("key") == digest:
            return entry
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):
        pass
    log.warning("the feature cache entry %s is damaged; extracting again", path)
    path.unlink(missing_ok=True)
    return None


def cached(backbone: Backbone, dataset: str, split_name: str, images: ImageList, *, cache_dir: Path,
           batch_size: int, num_workers: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features, labels, info) of one split, from the cache or extracted once and stored.

    On a GPU extraction runs under float16 autocast: those features are cached apart from float32 ones."""
    amp = device.type == "cuda"
    digest = key(backbone, dataset, images, amp=amp)
    path = Path(cache_dir).expanduser() / "features" / dataset / backbone.name / f"{split_name}-{digest[:24]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"key": digest, "path": str(path), "amp_float16": amp}
    entry = load_entry(path, digest)
    if entry is None:
        with FileLock(str(path) + ".lock"):
            entry = load_entry(path, digest)  # another job may have written it while we waited
            if entry is None:
                start = time.perf_counter()
                features = extract(backbone.model, images.with_transform(backbone.transform),
                                   batch_size=batch_size, num_workers=num_workers, device=device,
                                   desc=f"{dataset}/{split_name}")
                # the extraction's cost travels with the entry, so the runs that share it can amortise it
                entry = {"features": features, "labels": torch.tensor(images.labels), "key": digest,
                         "seconds": round(time.perf_counter() - start, 3), "device": str(device)}
                tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
                try:
                    torch.save(entry, tmp)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                log.info("extracted %s %s: %s -> %s", dataset, split_name, tuple(features.shape), path)
                return features, entry["labels"], {**info, "hit": False, **cost_of(entry)}
    log.info("cache hit %s %s: %s", dataset, split_name, path)
    return entry["features"], entry["labels"], {**info, "hit": True, **cost_of(entry)}


def cost_of(entry: dict) -> dict:
    """What the entry's extraction cost when it was made (entries written before this was kept: None)."""
    return {"images": len(entry["labels"]), "extraction_seconds": entry.get("seconds"),
            "extraction_device": entry.get("device")}
