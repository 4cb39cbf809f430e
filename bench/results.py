"""One run, one JSON record, at a path derived from the config, written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# what decides a run's numbers besides the data and the device type; paths and worker counts do not
SIGNED = ("backbone", "dataset", "method", "protocol", "seeds")
PACKAGES = ("seabench", "torch", "torchvision", "timm", "numpy", "scikit-learn", "hydra-core", "pillow")


def signature(config: dict, splits: dict[str, str], precision: dict) -> str:
    """sha256 of the signed config, the split fingerprints (a changed split is a new run) and the device's
    precision (a GPU record and a CPU record of one cell are two runs)."""
    signed = {k: config[k] for k in SIGNED} | {"splits": splits, "precision": precision}
    return hashlib.sha256(json.dumps(signed, sort_keys=True, default=str).encode()).hexdigest()


def path_for(results_dir: Path, *, dataset: str, backbone: str, method: str, protocol: str, sig: str) -> Path:
    return Path(results_dir) / "runs" / dataset / backbone / f"{method}-{protocol}-{sig[:12]}.json"


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary name in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write(path: Path, record: dict) -> None:
    if path.exists():
        log.warning("overwriting the record %s", path)
    write_text(path, json.dumps(record, indent=1, sort_keys=True, default=str))


def load_all(results_dir: Path) -> list[dict]:
    records = []
    for path in sorted((Path(results_dir) / "runs").rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("skipping the unreadable record %s: %s", path, err)
            continue
        record["path"] = str(path)
        records.append(record)
    return records


def git_sha() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def provenance(device) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    facts = {"git": git_sha(), "python": sys.version.split()[0], "platform": platform.platform(),
             "host": platform.node(), "packages": versions, "argv": sys.argv}
    if device.type == "cuda":
        facts |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version()}
    return facts
