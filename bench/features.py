"""Feature extraction, once per (weights, preprocessing, dataset, split), into an on-disk cache.

An entry's key is the sha256 of everything that changes the features: the backbone's weight hash
and architecture, its preprocessing, the dataset and the split's fingerprint (its items and labels and
each image file's size and modification time, or its bytes: `ImageList.fingerprint`). Entries
are written under a temporary name and renamed, under a file lock, so a killed job never leaves a
corrupt entry and concurrent jobs on the same cell extract once, on one machine or many (the lock is a
lease file, which works on a network file system; a lease its holder stopped renewing is taken over).
An entry stores the sha256 of its tensors; one whose bytes changed on disk is found on load, removed and
extracted again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench import UserError, digest, temps
from bench.backbones import Backbone
from bench.data import ImageList
from bench.locks import hold, tidy

log = logging.getLogger(__name__)

VERSION = 1  # bump when extraction itself changes (pooling, dtype ...): it is part of every key


def uses_amp(device: torch.device, amp: bool = True) -> bool:
    """Extraction runs under float16 autocast on a GPU (DESIGN section 2) unless `amp` is false (AugSelf
    extracts in float32), in float32 elsewhere."""
    return amp and torch.device(device).type == "cuda"


def key(backbone: Backbone, dataset: str, split: ImageList, *, amp: bool, fingerprint: str | None = None) -> str:
    """The entry's key; `fingerprint`: the split's, when the caller has it (`ImageList.fingerprint`)."""
    facts = {"version": VERSION, "weights": backbone.weights_sha256, "model": type(backbone.model).__name__,
             "preprocess": backbone.preprocess, "dataset": dataset, "split": fingerprint or split.fingerprint(),
             "source": split.source, "amp": amp}
    return digest(facts)


def extract(model: torch.nn.Module, images: ImageList, *, batch_size: int, num_workers: int,
            device: torch.device, desc: str = "extract", amp: bool = True) -> torch.Tensor:
    """Features [N, D] (float32, on the CPU) of every image, in order; float16 autocast on a GPU with `amp`."""
    cuda = device.type == "cuda"
    model = model.to(device).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=cuda, persistent_workers=False)
    chunks = []
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=uses_amp(device, amp)):
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


def checksum(features: torch.Tensor, labels: torch.Tensor) -> str:
    """sha256 of the entry's tensors (values, dtypes and shapes): stored with the entry, checked on every load."""
    h = hashlib.sha256()
    for t in (features, labels):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


def finite(X: torch.Tensor) -> bool:
    """No NaN or inf in X. The sum is one fast pass (isfinite(X).all() builds an N x D mask: ~40x slower);
    only a sum that overflows needs the exact check."""
    return bool(torch.isfinite(X.sum())) or bool(torch.isfinite(X).all())


def damage(entry, digest: str) -> str | None:
    """None for a sound entry of key `digest`, else what is wrong with it."""
    if not isinstance(entry, dict) or entry.get("key") != digest:
        return "it is not the entry of this key"
    X, y = entry.get("features"), entry.get("labels")
    if not (torch.is_tensor(X) and torch.is_tensor(y) and X.ndim == 2 and y.shape == X.shape[:1]):
        return "it holds no features and labels of matching lengths"
    if "checksum" not in entry:
        return "it has no checksum (written by an older seabench)"
    if entry["checksum"] != checksum(X, y):
        return "its tensors do not match their checksum"
    if not finite(X):  # never stored so (see `cached`): the bytes changed before the checksum was taken
        return "it holds NaN or infinite features"
    return None


def read_entry(path: Path, digest: str) -> tuple[dict | None, str | None]:
    """(entry, None) for a sound entry, (None, None) when there is none, (None, why) when it is damaged."""
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None, None
    except MemoryError:  # the machine's state, not the entry's: keep the entry
        raise
    except Exception as err:  # noqa: BLE001 -- damaged bytes make torch raise nearly anything
        return None, f"it cannot be read ({type(err).__name__})"
    problem = damage(entry, digest)
    return (None, problem) if problem else (entry, None)


def write_entry(path: Path, entry: dict) -> None:
    with temps.atomic(path, "feature cache entry") as tmp, open(tmp, "wb") as f:  # a file object:
        torch.save(entry, f)  # a full disk is then an OSError ("No space left"), not a RuntimeError of torch


def cached(backbone: Backbone, dataset: str, split_name: str, images: ImageList, *, cache_dir: Path,
           batch_size: int, num_workers: int, device: torch.device,
           amp: bool = True, lock_stale_s: float = 120.0,
           fingerprint: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features, labels, info) of one split, from the cache or extracted once and stored.

    A damaged entry (unreadable, checksum mismatch, NaN) is removed under the lock and extracted again.
    On a GPU extraction runs under float16 autocast unless `amp` is false: those features are cached apart
    from float32 ones."""
    amp = uses_amp(device, amp)
    digest = key(backbone, dataset, images, amp=amp, fingerprint=fingerprint)
    path = Path(cache_dir).expanduser() / "features" / dataset / backbone.name / f"{split_name}-{digest[:24]}.pt"
    temps.make_dir(path.parent, "feature cache folder")
    info = {"key": digest, "path": str(path), "amp_float16": amp}
    entry, _ = read_entry(path, digest)
    if entry is None:
        with hold(str(path) + ".lock", stale_s=lock_stale_s, what=f"extracting {dataset}/{split_name}"):
            entry, problem = read_entry(path, digest)  # another job may have written it while we waited
            if problem:
                log.warning("the feature cache entry %s is damaged (%s): removed, extracting again", path, problem)
                path.unlink(missing_ok=True)
            if entry is None:
                start = time.perf_counter()
                features = extract(backbone.model, images.with_transform(backbone.transform),
                                   batch_size=batch_size, num_workers=num_workers, device=device,
                                   desc=f"{dataset}/{split_name}", amp=amp)
                if not finite(features):  # not stored: so a NaN in the cache is damage, not the backbone
                    raise UserError(f"backbone {backbone.name} gave NaN or infinite features on "
                                    f"{dataset}/{split_name}")
                labels = torch.tensor(images.labels)
                # the extraction's cost travels with the entry, so the runs that share it can amortise it
                entry = {"features": features, "labels": labels, "key": digest,
                         "checksum": checksum(features, labels),
                         "seconds": round(time.perf_counter() - start, 3), "device": str(device)}
                write_entry(path, entry)
                log.info("extracted %s %s: %s -> %s", dataset, split_name, tuple(features.shape), path)
                return features, labels, {**info, "hit": False, **cost_of(entry)}
    tidy(str(path) + ".lock", stale_s=lock_stale_s)  # a lock its writer left (killed after the rename)
    log.info("cache hit %s %s: %s", dataset, split_name, path)
    return entry["features"], entry["labels"], {**info, "hit": True, **cost_of(entry)}


def cost_of(entry: dict) -> dict:
    """What the entry's extraction cost when it was made (entries written before this was kept: None)."""
    return {"images": len(entry["labels"]), "extraction_seconds": entry.get("seconds"),
            "extraction_device": entry.get("device")}
