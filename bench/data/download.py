"""Fetch a dataset's official files, verify them by hash, unpack them atomically into the data root.

Files are streamed to `<name>.part-<pid>` while hashed, checked, then renamed; archives are unpacked
into `<root>/.staging-<dataset>-<pid>/` and the finished dataset folder is renamed into place, so a
killed download never leaves a half-written file or folder under its real name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bench import UserError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes read per step while streaming a download


@dataclass(frozen=True)
class Resource:
    """One file of a dataset's official distribution."""

    url: str
    into: str = ""                 # where it goes, relative to the data root (unpacked there if an archive)
    digest: str | None = None      # "md5:...", "sha1:..." or "sha256:..."; None when no hash could be sourced
    source: str = ""               # who published the hash
    extract: bool = True           # an archive to unpack, or a plain file to place as is
    inner: tuple[str, ...] = ()    # archives inside the archive, unpacked into the same place

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verified(path: Path, digest: str | None) -> bool:
    if digest is None:
        return path.is_file()
    algorithm, expected = digest.split(":")
    return path.is_file() and file_hash(path, algorithm) == expected


def fetch(url: str, dest: Path, digest: str | None, *, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (temporary name + rename) and check its hash; reuse a verified `dest`."""
    dest = Path(dest)
    if verified(dest, digest):
        log.info("%s already downloaded and verified", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    algorithm = digest.split(":")[0] if digest else "sha256"
    h = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                     desc=dest.name, disable=None) as bar:
            while chunk := response.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        part.unlink(missing_ok=True)
        raise UserError(f"cannot download {url} to {dest}: {getattr(err, 'reason', err)}") from None
    if digest and h.hexdigest() != digest.split(":")[1]:
        part.unlink(missing_ok=True)
        raise UserError(f"download of {url} is corrupt: expected {digest}, got {algorithm}:{h.hexdigest()}; "
                        f"nothing was kept, try again")
    if not digest:
        log.warning("%s has no published checksum to verify against; its sha256 is %s", url, h.hexdigest())
    os.replace(part, dest)
    return dest


def unpack(archive: Path, into: Path) -> None:
    from torchvision.datasets.utils import extract_archive

    into.mkdir(parents=True, exist_ok=True)
    try:
        extract_archive(str(archive), str(into))
    except (OSError, EOFError, ValueError, RuntimeError, tarfile.TarError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot unpack {archive} into {into}: {err}") from None


def install(name: str, subfolder: str, resources: Sequence[Resource], root: Path,
            arrange: Callable[[Path], None] | None = None, keep_archives: bool = False) -> Path:
    """Download, verify and unpack every resource; then rename the finished folder to `root/subfolder`."""
    root = Path(root).expanduser()
    downloads = root / ".downloads" / name
    try:
        archives = [fetch(r.url, downloads / r.filename, r.digest) for r in resources]
    except UserError:
        remove_empty(downloads)
        raise
    staging = root / f".staging-{name}-{os.getpid()}"
    try:
        for resource, archive in zip(resources, archives):
            target = staging / resource.into
            if not resource.extract:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(archive, target / resource.filename)
                continue
            unpack(archive, target)
            for inner in resource.inner:
                unpack(target / inner, target)
        if arrange is not None:
            arrange(staging / subfolder)
        replace_folder(staging / subfolder, root / subfolder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        shutil.rmtree(downloads, ignore_errors=True)
        remove_empty(downloads)
    return root / subfolder


def remove_empty(folder: Path) -> None:
    """Remove `folder` and its parent `.downloads` if they are empty (other archives may be kept there)."""
    for path in (folder, folder.parent):
        with contextlib.suppress(OSError):
            path.rmdir()


def replace_folder(new: Path, final: Path) -> None:
    """Put `new` at `final`; an older (incomplete) copy is moved aside first and deleted after."""
    if not new.is_dir():
        raise UserError(f"the downloaded files did not unpack to the expected folder {new.name}")
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
