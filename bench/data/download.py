"""Fetch a dataset's official files, verify them by hash, unpack them atomically into the data root.

Files are fetched by bench.fetch (streamed to a temporary name while hashed, checked, then renamed)
into `<root>/.downloads/<dataset>/`; archives are unpacked into `<root>/.staging-<dataset>-<pid>/` and
the finished dataset folder is renamed into place, so a killed download never leaves a half-written
file or folder under its real name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import UserError, fetch


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

    @property
    def hashes(self) -> dict[str, str]:
        """`digest` as bench.fetch takes it (`{"md5": "..."}`); empty when no hash was sourced."""
        if self.digest is None:
            return {}
        algorithm, colon, value = self.digest.partition(":")
        if not (algorithm and colon and value):
            raise UserError(f"the digest of {self.filename} must read 'algorithm:hex' with one of "
                            f"{', '.join(fetch.ALGORITHMS)}, not {self.digest!r}")
        return {algorithm: value}


def fetch_resource(resource: Resource, folder: Path, *, timeout: float = fetch.TIMEOUT) -> Path:
    """Download one resource into `folder` with bench.fetch (verified, atomic) and return its path."""
    dest = folder / resource.filename
    try:
        fetch.download(resource.url, dest, hashes=resource.hashes, timeout=timeout)
    finally:
        # the downloads folder belongs to this install (it is deleted when done): its lock need not outlive it
        fetch.lockfile(dest).unlink(missing_ok=True)
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
        archives = [fetch_resource(r, downloads) for r in resources]
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
