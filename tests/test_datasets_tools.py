"""dataset=folder, verified atomic downloads (from file:// URLs, offline), `seabench data get` and `doctor`."""

from __future__ import annotations

import hashlib
import re
import tarfile
import urllib.request
from pathlib import Path

import fake_datasets
import pytest
from fake_datasets import FAKES, put

from bench import UserError, fetch
from bench.data import doctor, download, dtd, folder


# ---- dataset=folder ---------------------------------------------------------------------------------------
def test_folder_carves_val_from_train_when_there_is_none(tmp_path):
    fake_datasets.folder(tmp_path)
    task = folder.load(root=tmp_path, path=str(tmp_path / "mytask"), val_fraction=0.2, seed=0)
    assert task.classes == ["cat", "dog", "fox"]
    assert [len(task.splits[s]) for s in ("train", "val", "test")] == [12, 3, 6]
    assert all(not item.startswith("/") for item in task.splits["train"].items)  # machine-independent
    by_count = folder.load(root=tmp_path, path=str(tmp_path / "mytask"), val_per_class=2, seed=0)
    assert len(by_count.splits["val"]) == 6


def test_folder_uses_its_own_val_and_rejects_unknown_classes(tmp_path):
    fake_datasets.folder(tmp_path)
    for c in ("cat", "dog"):
        put(tmp_path / "mytask" / "val" / c / "v.jpg")
    task = folder.load(root=tmp_path, path=str(tmp_path / "mytask"), val_fraction=0.5)
    assert len(task.splits["val"]) == 2 and len(task.splits["train"]) == 15
    put(tmp_path / "mytask" / "test" / "wolf" / "w.jpg")
    with pytest.raises(UserError, match="classes that train/ lacks: wolf"):
        folder.load(root=tmp_path, path=str(tmp_path / "mytask"), val_fraction=0.5)


def test_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="dataset.load.path="):
        folder.load(root=tmp_path, path=None, val_fraction=0.1)
    with pytest.raises(UserError, match="lacks the sub-folder"):
        folder.load(root=tmp_path, path=str(tmp_path), val_fraction=0.1)
    fake_datasets.folder(tmp_path)
    for f in (tmp_path / "mytask" / "test").rglob("*.png"):
        f.unlink()
    for d in (tmp_path / "mytask" / "test").iterdir():
        d.rmdir()
    with pytest.raises(UserError, match="test holds no images"):
        folder.load(root=tmp_path, path=str(tmp_path / "mytask"), val_fraction=0.1)


def test_folder_reads_nested_images_names_skipped_files_and_refuses_empty_classes(tmp_path, caplog):
    fake_datasets.folder(tmp_path)
    base = tmp_path / "mytask"
    for c in ("cat", "dog", "fox"):  # dog and fox keep images in sub-folders only, as torchvision reads them
        if c != "cat":
            for i in range(5):
                (base / "train" / c / f"{i}.png").rename(base / "train" / c / f"{i}-moved.png")
                (base / "train" / c / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
                (base / "train" / c / f"{i}-moved.png").rename(base / "train" / c / "sub" / "deeper" / f"{i}.png")
    (base / "train" / "cat" / "notes.txt").write_text("not an image")
    (base / "train" / "cat" / ".DS_Store").write_bytes(b"")
    task = folder.load(root=tmp_path, path=str(base), val_per_class=1, seed=0)
    assert [task.splits["train"].labels.count(k) + task.splits["val"].labels.count(k) for k in range(3)] == [5] * 3
    assert "train/dog/sub/deeper/0.png" in task.splits["train"].items + task.splits["val"].items
    (warning,) = task.warnings
    assert "1 file(s) in train/" in warning and "train/cat/notes.txt" in warning and warning in caplog.text
    for f in (base / "train" / "fox").rglob("*.png"):
        f.unlink()
    with pytest.raises(UserError, match=r"train has class folders without images: fox \(images are files"):
        folder.load(root=tmp_path, path=str(base), val_per_class=1, seed=0)


def test_one_class_is_refused_for_folders_and_given_features(tmp_path):
    for i in range(4):
        put(tmp_path / "one" / "train" / "cat" / f"{i}.png", i, fmt="PNG")
        put(tmp_path / "one" / "test" / "cat" / f"{i}.png", i, fmt="PNG")
    with pytest.raises(UserError, match=r"train holds images of 1 class\(es\) \(cat\); a classifier needs at least"):
        folder.load(root=tmp_path, path=str(tmp_path / "one"), val_per_class=1)
    import torch

    from bench.data import given
    for split in ("train", "test"):
        torch.save(torch.randn(6, 4), tmp_path / f"{split}_x.pth")
        torch.save([2] * 6 if split == "train" else [0, 1, 2, 0, 1, 2], tmp_path / f"{split}_y.pth")
    with pytest.raises(UserError, match=r"train labels in .*train_y.pth hold 1 class\(es\) \[2\]"):
        given.load(name="f", train_feat_path=tmp_path / "train_x.pth", train_label_path=tmp_path / "train_y.pth",
                   test_feat_path=tmp_path / "test_x.pth", test_label_path=tmp_path / "test_y.pth")


def test_folder_is_named_after_itself_and_logs_the_carve(tmp_path, caplog):
    fake_datasets.folder(tmp_path)
    with caplog.at_level("INFO", logger="bench.data.folder"):
        task = folder.load(root=tmp_path, path=str(tmp_path / "mytask"), val_fraction=0.2, seed=0)
    assert task.name == "mytask"
    assert "has no val/: carved 3 of the 15 train images as val (20% of each class, at least one, seeded)" in caplog.text
    assert folder.load(root=tmp_path, path=str(tmp_path / "mytask"), name="pets2", val_fraction=0.2).name == "pets2"


# ---- downloads ----------------------------------------------------------------------------------------------
def make_archive(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A fake DTD tree packed like dtd-r1.0.1.tar.gz (a top folder dtd/), and its md5."""
    source = tmp_path / "src"
    FAKES[name].write(source)
    archive = tmp_path / "dtd-r1.0.1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "dtd" / "dtd", arcname="dtd")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_fetch_verifies_renames_and_reuses(tmp_path, monkeypatch):
    archive, md5 = make_archive(tmp_path, "dtd")
    out = tmp_path / "out"
    resource = download.Resource(archive.as_uri(), digest=f"md5:{md5}")
    dest = download.fetch_resource(resource, out)
    assert dest == out / archive.name and dest.read_bytes() == archive.read_bytes()
    with monkeypatch.context() as m:
        m.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched a file already on disk"))
        assert download.fetch_resource(resource, out) == dest
    sha1 = hashlib.sha1(archive.read_bytes()).hexdigest()  # MIT67 publishes a sha1
    download.fetch_resource(download.Resource(archive.as_uri(), digest=f"sha1:{sha1}"), out / "sha1")
    wrong = download.Resource(archive.as_uri(), digest="md5:" + "0" * 32)
    with pytest.raises(UserError, match=rf"not the published file \(its md5 is {md5}, expected 0{{32}}\)"):
        download.fetch_resource(wrong, out / "bad")
    kept = [archive.name, f"{archive.name}.sha256"]  # with the sha256 recorded; no partial file, no lock
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["bad", *kept, "sha1",
                                                                           *(f"sha1/{name}" for name in kept)]


def test_malformed_or_unknown_digest_is_named(tmp_path):
    archive, _ = make_archive(tmp_path, "dtd")
    for digest, message in [("abc", "digest of dtd-r1.0.1.tar.gz must read 'algorithm:hex' .*not 'abc'"),
                            ("crc32:0123abcd", "is a 'crc32' hash; known kinds: sha256, sha1, md5")]:
        with pytest.raises(UserError, match=message):
            download.fetch_resource(download.Resource(archive.as_uri(), digest=digest), tmp_path / "out")


def test_every_published_digest_is_one_fetch_checks():
    resources = [r for entry in doctor.registry().values() for r in entry.module.RESOURCES[entry.name]]
    kinds = {kind for r in resources for kind in fetch.published(r.filename, r.hashes)}
    assert kinds == {"md5", "sha1", "sha256"}  # MIT67's sha1 included


def test_fetch_without_network_names_file_url_and_destination(tmp_path):
    url = "http://127.0.0.1:9/nothing.tar.gz"  # the discard port: refused at once
    dest = tmp_path / "nothing.tar.gz"
    where = f"cannot download nothing.tar.gz from {re.escape(url)} .*put it at {re.escape(str(dest))}$"
    with pytest.raises(UserError, match=where):
        download.fetch_resource(download.Resource(url), tmp_path, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_data_get_installs_and_checks(tmp_path, monkeypatch, capsys):
    archive, md5 = make_archive(tmp_path, "dtd")
    resource = download.Resource(archive.as_uri(), into="dtd", digest=f"md5:{md5}")
    monkeypatch.setitem(dtd.RESOURCES, "dtd", (resource,))
    monkeypatch.setitem(dtd.EXPECTED, "dtd", FAKES["dtd"].official)
    root = tmp_path / "data"
    assert doctor.data_main(["get", "dtd", "--data-root", str(root)]) == 0
    assert "dtd is ready" in capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["dtd"]  # no staging, no archives left
    assert doctor.data_main(["get", "dtd", "--data-root", str(root)]) == 0
    assert "already complete" in capsys.readouterr().out


def test_data_get_a_corrupt_download_leaves_nothing(tmp_path, monkeypatch):
    archive, _ = make_archive(tmp_path, "dtd")
    monkeypatch.setitem(dtd.RESOURCES, "dtd", (download.Resource(archive.as_uri(), into="dtd", digest="md5:" + "1" * 32),))
    root = tmp_path / "data"
    with pytest.raises(UserError, match="corrupt"):
        doctor.data_main(["get", "dtd", "--data-root", str(root)])
    assert not (root / "dtd").exists() and not list(root.glob(".staging*"))


def test_data_get_cars_prints_the_manual_steps(tmp_path, capsys):
    assert doctor.data_main(["get", "cars", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path}/stanford_cars/cars_test_annos_withlabels.mat" in out and "devkit/cars_meta.mat" in out


def test_data_get_unknown_name_lists_the_known(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'imagenet'; known: aircraft, caltech101, cars"):
        doctor.data_main(["get", "imagenet", "--data-root", str(tmp_path)])


def test_doctor_reports_complete_incomplete_absent(tmp_path, monkeypatch, capsys):
    for name in ("dtd", "pets"):
        FAKES[name].write(tmp_path)
        monkeypatch.setitem(doctor.lookup(name).module.EXPECTED, name, FAKES[name].official)
    FAKES["pets"].truncate(tmp_path)
    assert doctor.doctor_main(["--data-root", str(tmp_path)]) == 1
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert len(rows) == 11
    assert "complete " in rows["dtd"] and "train / val / test 6 / 6 / 6" in rows["dtd"]
    assert "incomplete" in rows["pets"] and "Abyssinian_3.jpg" in rows["pets"]
    assert "absent" in rows["sun397"] and "seabench data get sun397" in rows["sun397"]
    assert "absent" in rows["cars"] and "datasets/README.md" in rows["cars"]
    assert doctor.doctor_main(["--data-root", str(tmp_path), "dtd"]) == 0


def test_data_get_without_network_leaves_nothing(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/dtd-r1.0.1.tar.gz"
    monkeypatch.setitem(dtd.RESOURCES, "dtd", (download.Resource(url, into="dtd", digest="md5:" + "2" * 32),))
    dest = tmp_path / ".downloads" / "dtd" / "dtd-r1.0.1.tar.gz"
    where = f"cannot download {dest.name} from {re.escape(url)} .*put it at {re.escape(str(dest))}$"
    with pytest.raises(UserError, match=where):
        doctor.data_main(["get", "dtd", "--data-root", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []
