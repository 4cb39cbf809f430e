"""Downloads that are verified before anyone reads them.

A download streams to `<dest>.part-<pid>`, is hashed, checked against the published hash (if
any) and only then renamed to `dest`: a killed job or a broken connection leaves no file under the
final name. The computed sha256 is written beside the file (`<dest>.sha256`) so a later corruption on
disk is caught even for files whose publisher gave no hash. Any URL `urllib` opens works, which is
how the tests serve files (`file://`) without a network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from bench import UserError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read
MIN_PREFIX = 8  # hex digits: the shortest published hash prefix we accept (MoCo's md5, torchvision's sha256)


def digests(path: Path) -> dict[str, str]:
    """sha256 and md5 of a file, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def record(path: Path, sha256: str) -> None:
    """Write the file's sha256 beside it (atomically), to be checked on every later use."""
    tmp = sidecar(path).with_name(f"{sidecar(path).name}.part-{os.getpid()}")
    tmp.write_text(sha256 + "\n")
    os.replace(tmp, sidecar(path))


def published(name: str, *, sha256: str | None, md5: str | None) -> dict[str, str]:
    """The hashes the publisher gave (full, or the prefix they print), checked for usable length."""
    want = {kind: value.lower() for kind, value in (("sha256", sha256), ("md5", md5)) if value}
    for kind, value in want.items():
        if len(value) < MIN_PREFIX:
            raise UserError(f"the published {kind} of {name} is too short to check ({value!r})")
    return want


def expected(path: Path, *, sha256: str | None, md5: str | None) -> dict[str, str]:
    """The hashes `path` must have: the published ones, else the one recorded when it was downloaded."""
    want = published(path.name, sha256=sha256, md5=md5)
    if not want and sidecar(path).is_file():
        want = {"sha256": sidecar(path).read_text().strip()}
    return want


def mismatch(found: dict[str, str], want: dict[str, str]) -> str | None:
    """None if every wanted hash (full or published prefix) matches, else a description of the first miss."""
    for kind, value in want.items():
        if not found[kind].startswith(value):
            return f"its {kind} is {found[kind]}, expected {value}"
    return None


def verify(path: Path, *, sha256: str | None, md5: str | None) -> tuple[dict[str, str], str | None]:
    """(digests of the file, None or why it fails its expected hash)."""
    found = digests(path)
    return found, mismatch(found, expected(path, sha256=sha256, md5=md5))


def download(url: str, dest: Path, *, sha256: str | None = None, md5: str | None = None) -> dict[str, str]:
    """Fetch `url` to `dest` (atomically, under a lock) and return its digests; raise on any failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():  # another job fetched it while we waited for the lock
            found, problem = verify(dest, sha256=sha256, md5=md5)
            if problem is None:
                return found
            dest.unlink()
        sidecar(dest).unlink(missing_ok=True)  # a fresh download is checked against the publisher only
        tmp = dest.with_name(f"{dest.name}.part-{os.getpid()}")
        try:
            _stream(url, tmp)
            found = digests(tmp)
            problem = mismatch(found, published(dest.name, sha256=sha256, md5=md5))
            if problem:
                raise UserError(f"the download of {dest.name} from {url} is corrupt or not the published file "
                                f"({problem}); it was removed, try again or fetch it by hand to {dest}")
            os.replace(tmp, dest)
            record(dest, found["sha256"])
        finally:
            tmp.unlink(missing_ok=True)
    log.info("downloaded %s (sha256 %s)", dest, found["sha256"])
    return found


def _stream(url: str, tmp: Path) -> None:
    """Copy the bytes behind `url` into `tmp`; a short read or any network error is a UserError."""
    name = tmp.name.rsplit(".part-", 1)[0]
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=None) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            written = out.tell()
    except (OSError, urllib.error.URLError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise UserError(f"cannot download {name} from {url} ({reason}); download it by hand and put it at "
                        f"{tmp.with_name(name)}") from None
    if total is not None and written != total:
        raise UserError(f"the download of {name} from {url} stopped after {written} of {total} bytes; "
                        f"try again or put the file at {tmp.with_name(name)} by hand")
