"""One run, one JSON record, at a path derived from the config, written atomically."""

from __future__ import annotations

import base64
import json
import logging
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from bench import digest, temps

log = logging.getLogger(__name__)

# what decides a run's numbers besides the data and the device type; paths and worker counts do not
SIGNED = ("backbone", "dataset", "method", "protocol", "seeds")
# what `seabench table` reads of a record: a record without them is run again, not skipped
NEEDED = ("backbone", "method", "protocol", "dataset", "metric", "test", "chosen", "edge", "timings", "created")
PACKAGES = ("seabench", "torch", "torchvision", "timm", "numpy", "scikit-learn", "hydra-core", "pillow")


def signed(config: dict) -> dict:
    """The part of a config that decides a run's numbers (`SIGNED`); the valid ranges of the method's
    hyperparameters (its `ranges:`, bench.ranges) are a check, not a setting, and are left out."""
    method = {k: v for k, v in config["method"].items() if k != "ranges"}
    return {k: config[k] for k in SIGNED} | {"method": method}


def signature(config: dict, splits: dict[str, str], precision: dict) -> str:
    """sha256 of the signed config, the split fingerprints (a changed split is a new run) and the device's
    precision (a GPU record and a CPU record of one cell are two runs)."""
    return digest(signed(config) | {"splits": splits, "precision": precision})


def cell_key(config: dict) -> str:
    """sha256 of the signed config alone (`SIGNED`): a sweep's cell, known before any work (bench.sweep.cells),
    unlike `signature`, which also needs the data and the device."""
    return digest(signed(config))


def path_for(results_dir: Path, *, dataset: str, backbone: str, method: str, protocol: str, sig: str) -> Path:
    return Path(results_dir) / "runs" / dataset / backbone / f"{method}-{protocol}-{sig[:12]}.json"


def pack(values) -> str:
    """Integers 0..65535 (predicted classes, labels) as "u2:" + base64 of little-endian uint16: 2 bytes
    (2.7 characters) an example, so a record can keep every seed's test predictions."""
    array = np.asarray(values, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ValueError("pack holds class indices 0..65535")
    return "u2:" + base64.b64encode(array.astype("<u2").tobytes()).decode("ascii")


def unpack(text: str) -> np.ndarray:
    """The int64 array `pack` stored."""
    kind, _, data = text.partition(":")
    if kind != "u2":
        raise ValueError(f"unknown packed array kind {kind!r}")
    return np.frombuffer(base64.b64decode(data), dtype="<u2").astype(np.int64)


def write_text(path: Path, text: str, what: str = "") -> None:
    """Write `text` to `path` atomically (see `bench.temps`); a failed write is one sentence."""
    with temps.atomic(path, what) as tmp:
        tmp.write_text(text)


def checksum(record: dict) -> str:
    """sha256 of a record's content (every key but `checksum`), as JSON reads it back: written into the
    record, checked on every read, so a changed digit or byte is found instead of used."""
    return digest({k: v for k, v in record.items() if k != "checksum"})


def write(path: Path, record: dict) -> None:
    if path.exists():
        log.warning("overwriting the record %s", path)
    record = json.loads(json.dumps(record, default=str))  # the checksum is of what a reader will see
    write_text(path, json.dumps(record | {"checksum": checksum(record)}, indent=1, sort_keys=True))


def read(path: Path) -> tuple[dict | None, str | None]:
    """(record, None) when `path` holds a record the table can use, else (None, what is wrong with it)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable ({err})"
    why = problem_of(record)
    return (None, why) if why else (record, None)


def problem_of(record) -> str | None:
    if not isinstance(record, dict):
        return f"it holds a JSON {type(record).__name__}, not a run record"
    if missing := [k for k in NEEDED if k not in record]:
        return f"it lacks {', '.join(missing)}"
    scores = record["test"].get("score") if isinstance(record["test"], dict) else None
    if not (isinstance(scores, list) and scores and all(isinstance(x, (int, float)) for x in scores)):
        return "it has no test scores"
    if not isinstance(record["timings"], dict):
        return "its timings are not a map"
    # a record written before records carried a checksum (or made by hand) is checked by its shape alone
    if "checksum" in record and record["checksum"] != checksum(record):
        return "its content does not match its checksum (damaged on disk or edited)"
    if "predictions" in record["test"] and "labels" in record["test"]:  # the paired test reads them
        try:
            labels = unpack(record["test"]["labels"])
            if any(len(unpack(p)) != len(labels) for p in record["test"]["predictions"]):
                return "its packed test predictions and labels differ in length"
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            return f"its packed test predictions cannot be read ({type(err).__name__})"
    return None


def load_all(results_dir: Path) -> list[dict]:
    """Every usable record under `results_dir`; each file that is not one is named in a warning and skipped."""
    records = []
    for path in sorted((Path(results_dir) / "runs").rglob("*.json")):
        record, why = read(path)
        if why:
            log.warning("skipping the record %s: %s", path, why)
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
        import torch  # here, not at the top: `seabench run` checks its settings before torch is imported

        facts |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version()}
    return facts
