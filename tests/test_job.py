"""One run in plain Python (bench.job): what identifies its record (device precision included), the pixel
backbone's size taken from the data, and the warnings a loader leaves in the record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from bench import backbones, cli, job, results
from bench import config as settings
from bench import features as feature_cache
from bench.data import FeatureSet, ImageList
from bench.report import table


def config(tmp_path, *overrides) -> dict:
    """conf/config.yaml composed with `overrides`, as plain values (what cli.py hands to job.run)."""
    return settings.compose([f"results_dir={tmp_path / 'results'}", f"cache_dir={tmp_path / 'cache'}", "device=cpu",
                             *overrides])


def features() -> FeatureSet:
    torch.manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.eye(3, 5)[y] * 4 + torch.randn(60, 5)
    splits = {"train": (x[:30], y[:30]), "val": (x[30:45], y[30:45]), "test": (x[45:], y[45:])}
    return FeatureSet(name="given3", num_classes=3, splits=splits, hashes={s: s * 8 for s in splits})


def test_a_gpu_and_a_cpu_record_of_one_cell_have_other_signatures_and_paths(tmp_path):
    cfg = config(tmp_path, "dataset=features", "method=linear")
    splits = {"train": "a" * 64, "test": "b" * 64}
    cpu = job.identity(cfg, "features", splits, "w" * 64, torch.device("cpu"))
    gpu = job.identity(cfg, "features", splits, "w" * 64, torch.device("cuda"))  # no GPU needed to name one
    assert cpu[0] != gpu[0] and cpu[1] != gpu[1] and cpu[1].parent == gpu[1].parent
    assert job.precision(torch.device("cuda")) == {"device": "cuda", "extract": "float16 autocast"}
    assert job.precision(torch.device("cpu")) == {"device": "cpu", "extract": "float32"}


def test_a_gpu_run_is_not_skipped_for_a_cpu_record(tmp_path, monkeypatch):
    cfg = config(tmp_path, "dataset=features", "method=linear", "method.grid.penalty=[1.0]")
    first = job.run(cfg, features())
    assert json.loads(first.read_text())["precision"] == {"device": "cpu", "extract": "float32"}
    assert job.run(cfg, features()) is None  # the same cell on the same device: skipped
    gpu = {"device": "cuda", "extract": "float16 autocast"}
    monkeypatch.setattr(job, "precision", lambda device, amp=True: gpu)  # the device facts of a GPU run, faked
    second = job.run(cfg, features())
    assert second is not None and second != first and json.loads(second.read_text())["precision"] == gpu
    df = table.frame(results.load_all(tmp_path / "results"))
    assert df.precision.tolist() == ["cuda, float16 autocast extraction"]  # the newest; the other one is named


def test_pixels_take_the_size_of_the_data_and_say_so(caplog):
    images = ImageList(["a", "b"], [0, 1], lambda item: Image.new("RGB", (28, 28) if item == "a" else (32, 30)))
    preprocess = {"resize": None, "crop": None, "interpolation": "bicubic", "mean": None, "std": None}
    with caplog.at_level(logging.INFO, logger="bench.job"):
        sized = job.sized_to_data(preprocess, images)
    assert sized == {**preprocess, "resize": 28, "crop": 28} and "center crop 28x28" in caplog.text
    fixed = {**preprocess, "resize": 8, "crop": 8}
    assert job.sized_to_data(fixed, images) is fixed  # an explicit size is kept


def test_pixels_keep_the_images_own_channels_and_say_so(caplog):
    """Gray images (handed over as RGB by every reader, R = G = B) give one channel: 784 columns on MNIST, not
    2,352 (the gray channel three times); colour images keep three. The cache key follows (preprocess)."""
    def read(item):
        gray = Image.linear_gradient("L").resize((28, 28))
        return gray.convert("RGB") if item != "colour" else Image.merge("RGB", (gray, gray.rotate(90), gray))
    preprocess = {"resize": 28, "crop": 28, "interpolation": "bicubic", "mean": None, "std": None, "channels": None}
    with caplog.at_level(logging.INFO, logger="bench.job"):
        sized = job.sized_to_data(preprocess, ImageList(["a", "b"], [0, 1], read))
    assert sized["channels"] == 1 and "1 channel per pixel" in caplog.text and "784 features" in caplog.text
    assert job.sized_to_data(preprocess, ImageList(["a", "colour"], [0, 1], read))["channels"] == 3
    flat = backbones.create(name="pixels", arch="pixels", source="none", preprocess=sized, cache_dir=Path("."))
    x = flat.transform(read("a"))
    assert x.shape == (1, 28, 28) and torch.equal(x[0], transforms.ToTensor()(read("a"))[0])
    assert feature_cache.key(flat, "d", ImageList(["a"], [0], read), amp=False) != feature_cache.key(
        backbones.create(name="pixels", arch="pixels", source="none", preprocess={**sized, "channels": 3},
                         cache_dir=Path(".")), "d", ImageList(["a"], [0], read), amp=False)


@pytest.mark.parametrize("given,shown", [(["backbone=pixels", "backbone.preprocess.resize=28", "+backbone.x=1",
                                           "method=sea", "~backbone.y"], ["+x=1", "preprocess.resize=28", "~y"]),
                                         (["dataset=folder", "dataset.name=backbone.z"], [])])
def test_backbone_overrides_are_what_the_command_line_changed_in_the_backbone(given, shown):
    assert cli.backbone_overrides(given) == shown
