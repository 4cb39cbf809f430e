"""Nothing stale is taken for done: a split's fingerprint covers each image file's size and modification time
(or its bytes, fingerprint=content), so an image rewritten in place is new data for the feature cache and the
record's signature; `seabench status` and a sweep's count compare a cell's record with the data, the weights
file and the device a run would sign now, and show a record that no longer matches as `stale`."""

from __future__ import annotations

import json
import os

import torch
from PIL import Image

from bench import results
from bench.data import ImageList

CELL = ["dataset=folder", "dataset.name=mine", "method=linear", "method.grid.penalty=[1.0]", "seeds=1",
        "extract.num_workers=0"]


def image(path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (16, 16), color=shade).save(path)


def folder(root) -> None:
    for split, n in (("train", 6), ("test", 2)):
        for c in range(3):
            for i in range(n):
                image(root / split / f"class{c}" / f"{i}.png", 40 + 80 * c + i)


def rewrite(path, shade: int) -> None:
    """The same file name, other pixels, written later (as a re-resized dataset or a replaced file)."""
    before = os.stat(path)
    image(path, shade)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))


def test_the_fingerprint_covers_each_files_size_and_time_or_its_bytes(tmp_path):
    for i in range(3):
        image(tmp_path / f"{i}.png", 10 * i)
    split = ImageList([f"{i}.png" for i in range(3)], [0, 1, 1], read=None, root=str(tmp_path))
    stat, content = split.fingerprint(), split.fingerprint(content=True)
    assert stat != content
    rewrite(tmp_path / "1.png", 200)
    assert split.fingerprint() != stat and split.fingerprint(content=True) != content
    stat, content = split.fingerprint(), split.fingerprint(content=True)
    os.utime(tmp_path / "1.png", ns=(0, 10**18))  # touched, the same bytes: stat sees it, content does not
    assert split.fingerprint() != stat and split.fingerprint(content=True) == content
    # items read out of a store's files (CIFAR's batches): each file of the store is covered
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "data_batch_1").write_bytes(b"x" * 10)
    packed = ImageList(["train/0"], [0], read=None, store=str(tmp_path / "store"))
    before = packed.fingerprint()
    (tmp_path / "store" / "data_batch_1").write_bytes(b"y" * 11)
    assert packed.fingerprint() != before
    # neither (sklearn's digits): the (item, label) list alone, as before
    assert ImageList([0, 1], [0, 1], read=None).fingerprint() == ImageList([0, 1], [0, 1], read=None).fingerprint()


def status_of(seabench, args) -> list[str]:
    out = seabench("status", *args).stdout.splitlines()
    return out


def test_an_image_rewritten_in_place_is_new_data_and_status_says_the_record_is_stale(seabench, tmp_path):
    folder(tmp_path / "mine")
    args = [*CELL, f"dataset.load.path={tmp_path / 'mine'}", "backbone=pixels"]
    seabench("run", *args)
    (first,) = (tmp_path / "results" / "runs" / "mine" / "pixels").glob("*.json")
    assert status_of(seabench, args)[0].startswith("done")

    rewrite(tmp_path / "mine" / "train" / "class1" / "3.png", 255)
    lines = status_of(seabench, args)
    assert lines[0].startswith("stale") and "its data changed since (split train)" in lines[0], lines
    assert lines[-1] == "1 cells: 0 done, 1 stale, 0 running, 0 failed, 0 missing"
    sweep = seabench("run", "-m", *args)
    assert "sweep: 1 cells, 0 done, 1 to run (1 of them over a stale record" in sweep.stdout
    assert "skipping" not in sweep.stdout + sweep.stderr
    records = sorted((tmp_path / "results" / "runs" / "mine" / "pixels").glob("*.json"))
    assert len(records) == 2
    old, new = (json.loads(p.read_text()) for p in (first, next(p for p in records if p != first)))
    assert old["splits"]["train"] != new["splits"]["train"] and old["splits"]["test"] == new["splits"]["test"]
    assert new["features"]["train"]["hit"] is False and new["features"]["train"]["key"] != old["features"]["train"]["key"]
    assert new["features"]["test"]["hit"] is True  # the untouched split comes from the cache
    assert status_of(seabench, args)[0].startswith("done")
    assert "skipping" in seabench("run", *args).stdout  # the same data again: skipped


def test_a_checkpoint_replaced_in_place_or_a_record_of_another_device_is_stale(seabench, tmp_path):
    import timm

    folder(tmp_path / "mine")
    ckpt = tmp_path / "mine.pth"
    args = [*CELL, f"dataset.load.path={tmp_path / 'mine'}", "backbone=local", "backbone.arch=test_resnet",
            f"backbone.checkpoint={ckpt}", "backbone.layout=torchvision", "backbone.preprocess.resize=16",
            "backbone.preprocess.crop=16", "device=cpu"]
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), ckpt)
    seabench("run", *args)
    (path,) = (tmp_path / "results" / "runs" / "mine" / "local").glob("*.json")
    assert status_of(seabench, args)[0].startswith("done")

    torch.manual_seed(1)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), ckpt)  # the same path, new weights
    line = status_of(seabench, args)[0]
    assert line.startswith("stale") and "its weights file changed since" in line, line

    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), ckpt)  # the first weights again
    assert status_of(seabench, args)[0].startswith("done")
    record = json.loads(path.read_text())
    results.write(path, record | {"precision": {"device": "cuda", "extract": "float16 autocast"}})
    line = status_of(seabench, args)[0]
    assert line.startswith("stale") and "it was made on cuda (float16 autocast), a run now uses cpu" in line, line


def test_fingerprint_is_stat_or_content(seabench, tmp_path):
    out = seabench("run", "dataset=digits", "backbone=pixels", "fingerprint=sha", check=False)
    assert out.returncode == 2 and "fingerprint must be stat or content, not 'sha'" in out.stderr


def test_fingerprint_content_runs_and_is_signed_apart(seabench, tmp_path):
    folder(tmp_path / "mine")
    args = [*CELL, f"dataset.load.path={tmp_path / 'mine'}", "backbone=pixels"]
    seabench("run", *args)
    seabench("run", *args, "fingerprint=content")  # another fingerprint of the same data: its own record
    assert len(list((tmp_path / "results" / "runs" / "mine" / "pixels").glob("*.json"))) == 2
    os.utime(tmp_path / "mine" / "test" / "class0" / "0.png", ns=(0, 10**18))  # touched, the same bytes
    assert status_of(seabench, [*args, "fingerprint=content"])[0].startswith("done")
    assert status_of(seabench, args)[0].startswith("stale")
