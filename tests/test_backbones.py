"""Every checkpoint layout of the zoo, written from a random timm ResNet exactly as its publisher writes it
(prefixes, wrappers, heads, queues, TF/Haiku names and HWIO kernels), loaded through the zoo's own config:
every tensor must come back equal and a fixed input must give identical features."""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf

import bench
from bench import UserError, backbones, fetch
from bench.backbones import layouts

CONF = Path(bench.__file__).parents[1] / "conf" / "backbone"
SMALL = {"resize": 64, "crop": 64, "interpolation": "bicubic", "mean": None, "std": None}


def source_model(arch: str) -> torch.nn.Module:
    """A seeded random timm model whose BN statistics are not the defaults (so they are really checked)."""
    torch.manual_seed(123)
    model = timm.create_model(arch, num_classes=0).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.normal_()
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny forwards: thread start-up and contention on a shared CI box cost more than the convolutions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(one_thread):
    return {arch: source_model(arch) for arch in ("resnet18", "resnet50")}


def heads(prefix: str, width: int) -> dict[str, torch.Tensor]:
    """A two-layer MLP head under `prefix`, as the methods' projectors are saved."""
    return {f"{prefix}0.weight": torch.randn(16, width), f"{prefix}0.bias": torch.randn(16),
            f"{prefix}2.weight": torch.randn(8, 16), f"{prefix}2.bias": torch.randn(8)}


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v.clone() for k, v in sd.items()}


def separius(key: str) -> str:
    """timm key -> Separius/SimCLRv2-Pytorch key (stem net.0, stages net.1-4 of blocks, BatchNormRelu = Seq(BN))."""
    if key.startswith(("conv1.", "bn1.")):
        return ("net.0.0." if key.startswith("conv1.") else "net.0.1.0.") + key.split(".", 1)[1]
    stage, block, module, rest = re.match(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)\.(.*)", key).groups()
    block_key = f"net.{stage}.blocks.{block}."
    if module.startswith("downsample"):
        return block_key + ("projection.shortcut." if module.endswith("0") else "projection.bn.0.") + rest
    i = int(module[-1]) - 1
    return block_key + (f"net.{2 * i}." if module.startswith("conv") else f"net.{2 * i + 1}.0.") + rest


def write_simclr2(sd: dict, path: Path) -> None:
    # Separius registers a block's projection before its main path, so the file lists it first
    order = sorted(sd, key=lambda k: (re.sub(r"\.(conv|bn)\d.*|\.downsample.*", "", k), "downsample" not in k))
    resnet = {separius(k): sd[k].clone() for k in order}
    resnet |= {"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}
    torch.save({"resnet": resnet, "head": heads("layers.", 2048)}, path)


class FlatMapping(dict):
    """Stands for Haiku's immutable mapping, pickled through its constructor like the real one."""

    def __reduce__(self):
        return FlatMapping, (dict(self),)


class frozendict(Mapping):  # Haiku's older container: pickled by its slots, no __reduce__
    __slots__ = ("_hash", "_storage")

    def __init__(self, *args, **kwargs):
        self._storage, self._hash = dict(*args, **kwargs), None

    def __getitem__(self, key):
        return self._storage[key]

    def __setitem__(self, key, value):  # only while the test builds the tree
        self._storage[key] = value

    def __iter__(self):
        return iter(self._storage)

    def __len__(self):
        return len(self._storage)


class _ByolExperimentState(NamedTuple):  # field order of byol/byol_experiment.py
    online_params: object
    target_params: object
    online_state: object
    target_state: object
    opt_state: object


class LarsState(NamedTuple):
    mu: object


def haiku_name(module: str, root: str) -> str:
    if module in ("conv1", "bn1"):
        return f"{root}/~/initial_{'conv' if module == 'conv1' else 'batchnorm'}"
    stage, block, layer = re.match(r"layer(\d)\.(\d+)\.(.*)", module).groups()
    name = {"downsample.0": "shortcut_conv", "downsample.1": "shortcut_batchnorm"}.get(layer)
    name = name or f"{'conv' if layer.startswith('conv') else 'batchnorm'}_{int(layer[-1]) - 1}"
    return f"{root}/~/block_group_{int(stage) - 1}/~/block_{block}/~/{name}"


def haiku_trees(sd: dict, root: str, container: type) -> tuple[Mapping, Mapping]:
    params, state = {}, {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        name, tensor = haiku_name(module, root), value.numpy()
        if param == "weight" and tensor.ndim == 4:
            params[name] = container(w=tensor.transpose(2, 3, 1, 0).copy())  # OIHW -> HWIO
        elif param in ("weight", "bias"):
            leaf = "scale" if param == "weight" else "offset"
            params.setdefault(name, container())[leaf] = tensor.reshape(1, 1, 1, -1)
        elif param in ("running_mean", "running_var"):
            ema = {"average": tensor.reshape(1, 1, 1, -1), "hidden": tensor.reshape(1, 1, 1, -1),
                   "counter": np.int32(1000)}
            state[f"{name}/~/{'mean' if param == 'running_mean' else 'var'}_ema"] = container(ema)
    width = sd["bn1.weight"].shape[0] * 8
    params |= {"projector/~/linear": container(w=np.ones((width, 4), np.float32), b=np.zeros(4, np.float32)),
               "projector/~/batch_norm": container(scale=np.ones((1, 4), np.float32),
                                                      offset=np.zeros((1, 4), np.float32)),
               "classifier": container(w=np.ones((width, 10), np.float32), b=np.zeros(10, np.float32))}
    state["projector/~/batch_norm/~/mean_ema"] = container(average=np.zeros((1, 4), np.float32))
    return container(sorted(params.items())), container(sorted(state.items()))  # jax.tree_map sorts keys


def write_byol(sd: dict, path: Path, *, dill_style: bool, monkeypatch) -> None:
    """BYOL's pickle: dict(experiment_state=_ByolExperimentState(...), step, rng), protocol 2; the classes
    live in modules (byol, haiku, dill) that exist only while writing, as on the machine that made the file.
    dill_style: namedtuple classes by value and Haiku's older slot-pickled frozendict; else by reference and
    FlatMapping pickled through its constructor."""
    fakes = {"byol": types.ModuleType("byol"), "byol.byol_experiment": types.ModuleType("byol.byol_experiment"),
             "byol.utils": types.ModuleType("byol.utils"), "byol.utils.optimizers": types.ModuleType("o"),
             "haiku": types.ModuleType("haiku"), "haiku._src": types.ModuleType("haiku._src"),
             "haiku._src.data_structures": types.ModuleType("d"), "dill": types.ModuleType("dill"),
             "dill._dill": types.ModuleType("dill._dill")}
    for module, cls in (("byol.byol_experiment", _ByolExperimentState), ("byol.utils.optimizers", LarsState),
                        ("haiku._src.data_structures", FlatMapping), ("haiku._src.data_structures", frozendict)):
        monkeypatch.setattr(cls, "__module__", module)
        setattr(fakes[module], cls.__name__, cls)

    def _create_namedtuple(name, fields, module):
        raise AssertionError("only referenced by the pickle, never called while writing")

    _create_namedtuple.__module__, _create_namedtuple.__qualname__ = "dill._dill", "_create_namedtuple"
    fakes["dill._dill"]._create_namedtuple = _create_namedtuple

    class DillLike(pickle.Pickler):
        def reducer_override(self, obj):  # dill writes namedtuple classes by value, as _create_namedtuple(...)
            if dill_style and any(obj is cls for cls in (_ByolExperimentState, LarsState)):
                return _create_namedtuple, (obj.__name__, obj._fields, obj.__module__)
            return NotImplemented

    params, state = haiku_trees(sd, "res_net50", frozendict if dill_style else FlatMapping)
    experiment = _ByolExperimentState(params, params, state, state, LarsState(params))
    with monkeypatch.context() as patch:
        for name, module in fakes.items():
            patch.setitem(sys.modules, name, module)
        with open(path, "wb") as f:
            DillLike(f, protocol=2).dump({"experiment_state": experiment, "step": 5004,
                                          "rng": np.zeros(2, np.uint32)})


def write(layout: str, sd: dict, path: Path, monkeypatch) -> None:
    """`sd` (timm keys) saved as the release of `layout` is saved."""
    fc = {"fc.weight": torch.randn(1000, sd["bn1.weight"].shape[0] * 8), "fc.bias": torch.randn(1000)}
    if layout in ("moco", "pcl"):
        state = prefixed(sd, "module.encoder_q.") | heads("module.encoder_q.fc.", 512) | prefixed(
            sd, "module.encoder_k.") | {"module.queue": torch.randn(8, 32), "module.queue_ptr": torch.zeros(1)}
        torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}}}, path)
    elif layout == "simsiam":
        state = prefixed(sd, "module.encoder.") | heads("module.encoder.fc.", 512) | heads("module.predictor.", 8)
        torch.save({"epoch": 100, "arch": "resnet50", "state_dict": state, "optimizer": {}}, path)
    elif layout == "swav":
        torch.save(prefixed(sd, "module.") | heads("module.projection_head.", 512)
                   | {"module.prototypes.prototypes0.weight": torch.randn(30, 8)}, path)
    elif layout == "pycontrast":
        model = prefixed(sd, "module.encoder.") | heads("module.head.", 512) | heads("module.head_jig.", 512)
        torch.save({"opt": argparse.Namespace(method="InfoMin", epochs=800), "model": model, "epoch": 800}, path)
    elif layout == "augself":
        torch.save({"backbone": sd, "projector": heads("", 512), "ss_predictor": {}}, path)
    elif layout == "simclr1":
        torch.save({"state_dict": sd | fc}, path)
    elif layout == "torchvision":
        torch.save(sd | fc, path)
    elif layout == "torchvision_nofc":
        torch.save(sd, path)
    elif layout == "simclr2":
        write_simclr2(sd, path)
    elif layout in ("byol", "byol_dill"):
        write_byol(sd, path, dill_style=layout == "byol_dill", monkeypatch=monkeypatch)
    else:
        raise ValueError(layout)


def zoo_config(name: str, **override) -> dict:
    """conf/backbone/<name>.yaml with command-line-like overrides (merged before interpolations resolve)."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.merge_with({"preprocess": SMALL, **override})
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


# (zoo entry, how its file is written, architecture used here); resnet50 where the layout is bottleneck-only
CASES = [("mocov2_r50", "moco", "resnet18"), ("pclv2_r50", "pcl", "resnet18"), ("simsiam_r50", "simsiam", "resnet18"),
         ("swav_r50", "swav", "resnet18"), ("infomin_r50", "pycontrast", "resnet18"),
         ("augself_in100_simsiam_augself", "augself", "resnet18"), ("simclr1_r50", "simclr1", "resnet18"),
         ("supervised_r50", "torchvision", "resnet18"), ("dino_r50", "torchvision_nofc", "resnet18"),
         ("simclr2_r50", "simclr2", "resnet50"), ("byol_r50", "byol", "resnet50"),
         ("byol_r50", "byol_dill", "resnet18")]


def assert_same(backbone, source) -> None:
    loaded = backbone.model.state_dict()
    assert set(loaded) == set(source.state_dict())
    for key, tensor in source.state_dict().items():
        assert torch.equal(loaded[key], tensor), key
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(backbone.model(x), source(x))


@pytest.mark.parametrize("name,written,arch", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_zoo_entry_loads_every_tensor(name, written, arch, models, tmp_path, monkeypatch):
    cfg = zoo_config(name, arch=arch, url=None, md5=None)
    path = backbones.checkpoint_path(cache_dir=tmp_path, file=cfg["file"])
    path.parent.mkdir(parents=True)
    write(written, models[arch].state_dict(), path, monkeypatch)
    cfg["sha256"] = fetch.digests(path)["sha256"]  # the synthetic file stands in for the published one
    backbone = backbones.create(**cfg, cache_dir=tmp_path)
    assert_same(backbone, models[arch])
    assert backbone.provenance["layout"] == cfg["layout"]
    assert backbone.provenance["verified"] == "published sha256"
    assert backbone.weights_sha256 == backbones.tensors_sha256(models[arch].state_dict())


@pytest.mark.parametrize("written,expected", [("moco", "moco"), ("simsiam", "simsiam"), ("swav", "swav"),
                                              ("pycontrast", "pycontrast"), ("augself", "augself"),
                                              ("simclr1", "simclr1"), ("torchvision", "torchvision"),
                                              ("byol_dill", "byol")])
def test_local_file_layout_is_detected(written, expected, models, tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"  # no telling suffix: detection looks at the contents
    write(written, models["resnet18"].state_dict(), path, monkeypatch)
    cfg = zoo_config("local", arch="resnet18", checkpoint=str(path))
    backbone = backbones.create(**cfg, cache_dir=tmp_path)
    assert backbone.provenance["layout"] == expected
    assert_same(backbone, models["resnet18"])


def test_byol_conversion_is_cached_next_to_the_file(models, tmp_path, monkeypatch):
    path = tmp_path / "pretrain_res50x1.pkl"
    write("byol", models["resnet18"].state_dict(), path, monkeypatch)
    cfg = zoo_config("byol_r50", arch="resnet18", checkpoint=str(path))
    first = backbones.create(**cfg, cache_dir=tmp_path)
    cached = list(tmp_path.glob("pretrain_res50x1.pkl.resnet18.*.pt"))
    assert len(cached) == 1
    monkeypatch.setattr(layouts, "read", lambda *a, **k: pytest.fail("the cached conversion was not used"))
    again = backbones.create(**cfg, cache_dir=tmp_path)
    assert again.weights_sha256 == first.weights_sha256


def error_of(cfg: dict, cache_dir: Path) -> str:
    with pytest.raises(UserError) as err:
        backbones.create(**cfg, cache_dir=cache_dir)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_foreign_architecture_is_named(models, tmp_path, monkeypatch):
    path = tmp_path / "r18.pth.tar"
    write("moco", models["resnet18"].state_dict(), path, monkeypatch)
    message = error_of(zoo_config("mocov2_r50", checkpoint=str(path)), tmp_path)
    assert "does not fit timm's resnet50" in message and "2-2-2-2 basic blocks" in message


def test_foreign_architecture_by_order(models, tmp_path, monkeypatch):
    path = tmp_path / "r50_1x_sk0.pth"
    write("simclr2", models["resnet50"].state_dict(), path, monkeypatch)
    message = error_of(zoo_config("simclr2_r50", arch="resnet18", checkpoint=str(path)), tmp_path)
    assert "another architecture" in message


def test_missing_key_is_listed(models, tmp_path):
    sd = dict(models["resnet18"].state_dict())
    del sd["layer3.1.bn2.running_var"]
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": prefixed(sd, "module.encoder_q.")}, path)
    message = error_of(zoo_config("mocov2_r50", arch="resnet18", checkpoint=str(path)), tmp_path)
    assert "1 missing keys ['layer3.1.bn2.running_var']" in message


def test_unknown_key_and_wrong_layout_are_named(models, tmp_path, monkeypatch):
    path = tmp_path / "swav.pth"
    write("swav", models["resnet18"].state_dict(), path, monkeypatch)
    message = error_of(zoo_config("mocov2_r50", arch="resnet18", checkpoint=str(path)), tmp_path)
    assert "set backbone.layout=swav" in message
    sd = prefixed(models["resnet18"].state_dict(), "module.") | {"momentum.conv1.weight": torch.ones(2)}
    torch.save(sd, path)
    message = error_of(zoo_config("swav_r50", arch="resnet18", checkpoint=str(path)), tmp_path)
    assert "momentum.conv1.weight" in message and "does not know" in message
    torch.save(prefixed(models["resnet18"].state_dict(), "module.") | {"module.jigsaw.weight": torch.ones(2)}, path)
    message = error_of(zoo_config("swav_r50", arch="resnet18", checkpoint=str(path)), tmp_path)
    assert "1 unexpected keys ['jigsaw.weight']" in message
    assert "known: augself, byol, moco" in error_of(zoo_config("local", checkpoint=str(path), layout="nope"),
                                                    tmp_path)


@pytest.mark.parametrize("written", ["moco", "byol"])
def test_truncated_file_is_refused(written, models, tmp_path, monkeypatch):
    path = tmp_path / ("pretrain_res50x1.pkl" if written == "byol" else "moco.pth.tar")
    write(written, models["resnet18"].state_dict(), path, monkeypatch)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = error_of(zoo_config("local", arch="resnet18", checkpoint=str(path)), tmp_path)
    assert "truncated" in message and str(path) in message


def test_baselines_and_timm_tags(models, tmp_path):
    pixels = backbones.create(**zoo_config("pixels", preprocess={**SMALL, "channels": 3}), cache_dir=tmp_path)
    assert pixels.model(torch.ones(1, 3, 4, 4)).shape == (1, 48)
    random = backbones.create(**zoo_config("test_resnet"), cache_dir=tmp_path)
    assert random.provenance == {"init_seed": 0}
    path = tmp_path / "resnet18_a1.pth"  # an offline copy of a timm tag's weights (with its classifier)
    torch.save(models["resnet18"].state_dict() | {"fc.weight": torch.zeros(1000, 512),
                                                  "fc.bias": torch.zeros(1000)}, path)
    cfg = zoo_config("timm", arch="resnet18.a1_in1k", checkpoint=str(path),
                     preprocess={**SMALL, "mean": "from_weights", "std": "from_weights"})
    tagged = backbones.create(**cfg, cache_dir=tmp_path)
    assert tagged.name == "timm_resnet18.a1_in1k"  # the config's `${.arch}` interpolation
    assert tagged.preprocess["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert_same(tagged, models["resnet18"])
    with pytest.raises(UserError, match="only goes with source timm"):
        backbones.make_transform(**cfg["preprocess"])
    with pytest.raises(UserError, match="cannot load timm's pretrained resnet18.no_such_tag"):
        backbones.create(**zoo_config("timm", arch="resnet18.no_such_tag"), cache_dir=tmp_path)
    assert "names no checkpoint file" in error_of(zoo_config("local"), tmp_path)


def test_state_dict_without_batch_counters_loads_as_torch_loads_it(models, tmp_path):
    """torchvision's older ImageNet files predate BatchNorm's num_batches_tracked: torch fills the counter."""
    sd = {k: v for k, v in models["resnet18"].state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18-old.pth"
    torch.save(sd | {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    backbone = backbones.create(**zoo_config("supervised_r50", arch="resnet18", checkpoint=str(path)),
                                cache_dir=tmp_path)
    reference = timm.create_model("resnet18", num_classes=0)
    reference.load_state_dict(sd, strict=False)  # torch's own fill (no _metadata: version None)
    for key, tensor in reference.state_dict().items():
        assert torch.equal(backbone.model.state_dict()[key], tensor), key
    assert_same(backbone, models["resnet18"])
    del sd["layer1.0.bn1.running_mean"]  # every other key stays strict
    torch.save(sd, path)
    message = error_of(zoo_config("supervised_r50", arch="resnet18", checkpoint=str(path)), tmp_path)
    assert "1 missing keys ['layer1.0.bn1.running_mean']" in message


def test_swav_layout_also_takes_a_state_dict_wrapper(models, tmp_path):
    """SwAV's eval_linear.py unwraps `state_dict` when present; SeLa-v2 files are read the same way."""
    path = tmp_path / "selav2.pth.tar"
    state = prefixed(models["resnet18"].state_dict(), "module.") | heads("module.projection_head.", 512)
    torch.save({"epoch": 400, "state_dict": state}, path)
    backbone = backbones.create(**zoo_config("selav2_r50", arch="resnet18", checkpoint=str(path)), cache_dir=tmp_path)
    assert_same(backbone, models["resnet18"])
    detected = backbones.create(**zoo_config("local", arch="resnet18", checkpoint=str(path)), cache_dir=tmp_path)
    assert detected.provenance["layout"] == "swav"


def test_augself_entries_point_to_the_readme_not_a_missing_folder():
    for name in ("augself_in100_mocov2", "augself_in100_mocov2_augself", "augself_in100_simsiam",
                 "augself_in100_simsiam_augself"):
        assert zoo_config(name)["homepage"] == "https://github.com/hankook/AugSelf#checkpoints"
