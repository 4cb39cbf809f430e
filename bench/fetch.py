"""Downloads that are verified before anyone reads them: the one downloader of checkpoints and datasets.

A download streams to a temporary (`bench.temps`) under a lock (`<dest>.lock`, a lease that is removed when
released and taken over when its holder is gone: `bench.locks`), is hashed, checked against
the published hashes (if any) and only then renamed to `dest`: a killed job or a broken connection
leaves no file under the final name. Published hashes are a mapping of algorithm to hex digest, full
or the prefix a publisher prints (`{"md5": "a04e12f8"}`). The computed sha256 is written beside the
file (`<dest>.sha256`) so a later corruption on disk is caught even for files whose publisher gave no
hash. Any URL `urllib` opens works, which is how the tests serve files (`file://`) without a network.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from tqdm import tqdm

from bench import UserError, locks, temps

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read
TIMEOUT = 60.0  # seconds a connection may stay silent
LOCK_STALE_S = 120.0  # seconds without renewal after which a download's lock is taken over (on another host)
MIN_PREFIX = 8  # hex digits: the shortest published hash prefix we accept (MoCo's md5, torchvision's sha256)
ALGORITHMS = ("sha256", "sha1", "md5")  # what publishers give (MIT67 publishes a sha1)
RECORDED = "sha256"  # the hash every download is recorded and reported by

Hashes = Mapping[str, "str | None"]  # algorithm -> published hex digest (full or prefix); None: not published


def digests(path: Path, algorithms: Iterable[str] = ()) -> dict[str, str]:
    """The sha256 of a file and its hashes by any other `algorithms`, in one pass."""
    hashes = {kind: hashlib.new(kind) for kind in (RECORDED, *algorithms)}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {kind: h.hexdigest() for kind, h in hashes.items()}


def sidecar(path: Path) -> Path:
    return path.with_name(f"{path.name}.{RECORDED}")


def lockfile(path: Path) -> Path:
    return path.with_name(f"{path.name}.lock")


def record(path: Path, sha256: str) -> None:
    """Write the file's sha256 beside it (atomically), to be checked on every later use."""
    with temps.atomic(sidecar(path), "hash record") as tmp:
        tmp.write_text(sha256 + "\n")


def published(name: str, hashes: Hashes) -> dict[str, str]:
    """The hashes the publisher gave (full, or the prefix they print), checked for kind and usable length."""
    want = {kind.lower(): value.lower() for kind, value in hashes.items() if value}
    for kind, value in want.items():
        if kind not in ALGORITHMS:
            raise UserError(f"the published hash of {name} is a {kind!r} hash; known kinds: "
                            f"{', '.join(ALGORITHMS)}")
        if len(value) < MIN_PREFIX:
            raise UserError(f"the published {kind} of {name} is too short to check ({value!r})")
    return want


def expected(path: Path, hashes: Hashes) -> dict[str, str]:
    """The hashes `path` must have: the published ones, else the one recorded when it was downloaded."""
    want = published(path.name, hashes)
    if not want and sidecar(path).is_file():
        want = {RECORDED: sidecar(path).read_text().strip()}
    return want


def mismatch(found: dict[str, str], want: dict[str, str]) -> str | None:
    """None if every wanted hash (full or published prefix) matches, else a description of the first miss."""
    for kind, value in want.items():
        if not found[kind].startswith(value):
            return f"its {kind} is {found[kind]}, expected {value}"
    return None


def verify(path: Path, hashes: Hashes) -> tuple[dict[str, str], str | None]:
    """(digests of the file, None or why it fails its expected hash)."""
    want = expected(path, hashes)
    found = digests(path, want)
    return found, mismatch(found, want)


def download(url: str, dest: Path, *, hashes: Hashes | None = None,
             timeout: float = TIMEOUT) -> dict[str, str]:
    """Fetch `url` to `dest` (atomically, under a lock) and return its digests; reuse a `dest` that passes."""
    want = published(dest.name, hashes or {})
    temps.make_dir(dest.parent, "download folder")
    with locks.hold(str(lockfile(dest)), stale_s=LOCK_STALE_S, what=f"downloading {dest.name}"):
        if dest.is_file():  # fetched earlier, or by another job while we waited for the lock
            found, problem = verify(dest, want)
            if problem is None:
                log.info("%s already downloaded and verified", dest)
                return found
            dest.unlink()
        sidecar(dest).unlink(missing_ok=True)  # a fresh download is checked against the publisher only
        found = _fetch_new(url, dest, want, timeout)
    if want:
        log.info("downloaded %s (%s %s)", dest, RECORDED, found[RECORDED])
    else:
        log.warning("%s has no published hash to check it against; its %s %s is recorded in %s",
                    url, RECORDED, found[RECORDED], sidecar(dest))
    return found


def _fetch_new(url: str, dest: Path, want: dict[str, str], timeout: float) -> dict[str, str]:
    """Stream, hash, check against `want`, rename to `dest` and record; the caller holds the lock."""
    with temps.atomic(dest, "download") as tmp:
        _stream(url, tmp, dest, timeout)
        found = digests(tmp, want)
        problem = mismatch(found, want)
        if problem:
            raise UserError(f"the download of {dest.name} from {url} is corrupt or not the published file "
                            f"({problem}); it was removed, try again or fetch it by hand to {dest}")
    record(dest, found[RECORDED])
    return found


def _stream(url: str, tmp: Path, dest: Path, timeout: float) -> None:
    """Copy the bytes behind `url` into `tmp`; a short read or any network error is a UserError."""
    name = dest.name
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            written = out.tell()
    except OSError as err:
        if err.errno in temps.HINTS:  # the local disk, not the network: a full disk, a read-only folder
            raise UserError(temps.why(dest, err, "download")) from None
        reason = getattr(err, "reason", None) or err
        raise UserError(f"cannot download {name} from {url} ({reason}); download it by hand and put it at "
                        f"{dest}") from None
    except ValueError as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"cannot download {name} from {url} ({reason}); download it by hand and put it at "
                        f"{dest}") from None
    if total is not None and written != total:
        raise UserError(f"the download of {name} from {url} stopped after {written} of {total} bytes; "
                        f"try again or put the file at {dest} by hand")
