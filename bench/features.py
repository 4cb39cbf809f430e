"""Feature extraction, once per (weights, preprocessing, dataset, split), into an on-disk cache.

An entry's key is the sha256 of everything that changes the features: the backbone's weight hash
and architecture, its preprocessing, the dataset and the split's (item, label) fingerprint. Entries
are written under a temporary name and renamed, under a file lock, so a killed job never leaves a
corrupt entry and concurrent jobs on the same cell extract once, on one machine or many (the lock is a
lease file, which works on a network file system; a lease its holder stopped renewing is taken over).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import SoftFileLease, Timeout
from tqdm import tqdm

from bench import UserError
from bench.backbones import Backbone
from bench.data import ImageList

log = logging.getLogger(__name__)

VERSION = 1  # bump when extraction itself changes (pooling, dtype ...): it is part of every key


def amp(device: torch.device) -> bool:
    """Extraction runs under float16 autocast on a GPU (DESIGN section 2), in float32 elsewhere."""
    return torch.device(device).type == "cuda"


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
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp(device)):
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


def holder(lock_path: str) -> str:
    """'pid 123 on node7', read from a lock file, or 'another job' when it cannot be read."""
    try:
        from filelock._soft import parse_marker, read_lock_file  # filelock's reader of its own lease files

        record = parse_marker(read_lock_file(lock_path)[0])
    except (ImportError, OSError, ValueError):
        record = None
    return f"pid {record.pid} on {record.hostname}" if record else "another job"


@contextmanager
def hold(lock_path: str, *, stale_s: float, what: str):
    """Hold the lock at `lock_path` (a lease renewed every stale_s / 3 seconds while held); say who holds it
    while waiting. A dead holder on this host is replaced at once, one on another host after stale_s seconds
    without a renewal (kill -9, a lost node): every job sharing the cache must use the same stale_s."""
    lock = SoftFileLease(lock_path, lease_duration=stale_s)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        waiting, start = None, time.monotonic()
        while True:
            if (who := holder(lock_path)) != waiting:
                log.info("waiting for %s to finish %s (its lock is taken over after %g s without renewal)",
                         who, what, stale_s)
                waiting = who
            try:
                lock.acquire(timeout=min(30.0, stale_s), poll_interval=0.2)
                break
            except Timeout:
                continue
        log.info("took the lock of %s after %.1f s", what, time.monotonic() - start)
    try:
        yield
    finally:
        lock.release()


def cached(backbone: Backbone, dataset: str, split_name: str, images: ImageList, *, cache_dir: Path,
           batch_size: int, num_workers: int, device: torch.device,
           lock_stale_s: float = 120.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features, labels, info) of one split, from the cache or extracted once and stored.

    On a GPU extraction runs under float16 autocast: those features are cached apart from float32 ones."""
    digest = key(backbone, dataset, images, amp=amp(device))
    path = Path(cache_dir).expanduser() / "features" / dataset / backbone.name / f"{split_name}-{digest[:24]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"key": digest, "path": str(path), "amp_float16": amp(device)}
    entry = load_entry(path, digest)
    if entry is None:
        with hold(str(path) + ".lock", stale_s=lock_stale_s, what=f"extracting {dataset}/{split_name}"):
            entry = load_entry(path, digest)  # another job may have written it while we waited
            if entry is None:
                features = extract(backbone.model, images.with_transform(backbone.transform),
                                   batch_size=batch_size, num_workers=num_workers, device=device,
                                   desc=f"{dataset}/{split_name}")
                entry = {"features": features, "labels": torch.tensor(images.labels), "key": digest}
                tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
                try:
                    torch.save(entry, tmp)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                log.info("extracted %s %s: %s -> %s", dataset, split_name, tuple(features.shape), path)
                return features, entry["labels"], {**info, "hit": False}
    log.info("cache hit %s %s: %s", dataset, split_name, path)
    return entry["features"], entry["labels"], {**info, "hit": True}
