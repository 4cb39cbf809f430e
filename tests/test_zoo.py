"""The zoo as a registry (every conf/backbone/*.yaml is complete and loadable by `create`), downloads served
from file:// URLs and a local socket (never the network), hash checks on download and on disk, and the
`seabench backbones` listing."""

from __future__ import annotations

import hashlib
import inspect
import re
import socket
import urllib.request
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

import bench
from bench import UserError, backbones, fetch
from bench.backbones import layouts, zoo
from bench.cli import main as cli

CONF = Path(bench.__file__).parents[1] / "conf" / "backbone"
NAMES = sorted(p.stem for p in CONF.glob("*.yaml"))
HEX = re.compile(r"^[0-9a-f]{8,64}$")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread start-up costs more than the work
    yield
    torch.set_num_threads(threads)


def config(name: str, **override) -> dict:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.merge_with(override)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("name", NAMES)
def test_every_config_is_a_complete_entry(name):
    cfg = config(name)
    assert cfg["name"] == name or name == "timm"
    assert not set(cfg) - set(inspect.signature(backbones.create).parameters) - {"label", "method", "paper", "published"}
    assert {"resize", "crop", "interpolation", "mean", "std"} <= set(cfg["preprocess"])
    if cfg["source"] == "checkpoint" and name != "local":
        assert cfg["layout"] in layouts.KNOWN and cfg["file"] and cfg["paper"] and cfg["method"]
        assert cfg["url"] or cfg["homepage"], "a file must say where to get it"
        assert all(HEX.match(h) for h in (cfg["sha256"], cfg["md5"]) if h)
        assert cfg["arch"] in timm.list_models()
    if name.startswith("simclr"):
        assert cfg["preprocess"]["mean"] is None  # SimCLR's TF models take [0, 1] pixels


def test_every_config_composes_in_the_config_tree():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base=None):
        for name in NAMES:
            cfg = compose(config_name="config", overrides=[f"backbone={name}"])
            plain = OmegaConf.to_container(cfg.backbone, resolve=True)
            assert plain["name"] == (f"timm_{plain['arch']}" if name == "timm" else name)


def test_zoo_covers_the_issue():
    wanted = {"mocov1_r50", "mocov2_r50", "mocov2_r50_200ep", "simclr1_r50", "simclr2_r50", "byol_r50", "swav_r50",
              "deepclusterv2_r50", "selav2_r50", "dino_r50", "barlowtwins_r50", "simsiam_r50", "pclv1_r50",
              "pclv2_r50", "infomin_r50", "augself_in100_mocov2", "augself_in100_mocov2_augself",
              "augself_in100_simsiam", "augself_in100_simsiam_augself", "supervised_r50", "local", "timm"}
    assert wanted <= set(NAMES)


def published_file(tmp_path: Path) -> tuple[Path, str]:
    """A torchvision-layout test_resnet checkpoint standing in for a published file, and its sha256."""
    torch.manual_seed(0)
    path = tmp_path / "publisher" / "weights.pth"
    path.parent.mkdir()
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def entry(url: str, **override) -> dict:
    small = {"resize": 32, "crop": 32, "interpolation": "bicubic", "mean": None, "std": None}
    return config("supervised_r50", **{"arch": "test_resnet", "file": "tv.pth", "url": url, "sha256": None,
                                       "md5": None, "preprocess": small, **override})


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "checkpoints").glob("*") if not p.name.endswith(".lock"))


def test_download_is_verified_recorded_and_reused(tmp_path, monkeypatch):
    source, sha = published_file(tmp_path)
    cache = tmp_path / "cache"
    backbone = backbones.create(**entry(source.as_uri(), sha256=sha), cache_dir=cache)
    assert backbone.provenance["file_sha256"] == sha and backbone.provenance["verified"] == "published sha256"
    assert leftovers(cache) == ["tv.pth", "tv.pth.sha256"]
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched a file already on disk"))
    md5 = hashlib.md5(source.read_bytes()).hexdigest()[:8]  # MoCo-style published md5 prefix
    assert backbones.create(**entry(source.as_uri(), md5=md5), cache_dir=cache).weights_sha256 == backbone.weights_sha256


def test_wrong_published_hash_leaves_nothing(tmp_path):
    source, _ = published_file(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="corrupt or not the published file .*expected 0123456789ab"):
        backbones.create(**entry(source.as_uri(), sha256="0123456789ab"), cache_dir=cache)
    assert leftovers(cache) == []


def test_damage_on_disk_is_detected(tmp_path):
    source, sha = published_file(tmp_path)
    cache = tmp_path / "cache"
    backbones.create(**entry(source.as_uri()), cache_dir=cache)  # no published hash: sha256 recorded
    assert (cache / "checkpoints" / "tv.pth.sha256").read_text().strip() == sha
    target = cache / "checkpoints" / "tv.pth"
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UserError, match="fails its hash check"):  # no URL: say how to fix it
        backbones.create(**entry(None, homepage="https://example.org"), cache_dir=cache)
    fixed = backbones.create(**entry(source.as_uri()), cache_dir=cache)  # with a URL: fetched again
    assert fixed.provenance["file_sha256"] == sha == fetch.digests(target)["sha256"]


def test_no_network_names_file_url_and_place(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tv.pth"
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as err:
        backbones.create(**entry(url), cache_dir=cache)
    message = str(err.value)
    assert "tv.pth" in message and url in message and str(cache / "checkpoints" / "tv.pth") in message
    assert leftovers(cache) == []


def test_published_prefix_of_any_kind(tmp_path):
    source, _ = published_file(tmp_path)
    sha1 = hashlib.sha1(source.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "checkpoints" / "tv.pth"
    found = fetch.download(source.as_uri(), dest, hashes={"sha1": sha1[:8], "md5": None})
    assert found["sha1"] == sha1 and fetch.sidecar(dest).read_text().strip() == found["sha256"]
    with pytest.raises(UserError, match="the published sha1 of tv.pth is too short to check"):
        fetch.download(source.as_uri(), dest, hashes={"sha1": sha1[:7]})


def test_short_download_is_refused(tmp_path, monkeypatch):
    class Short:  # a server that promises more bytes than it sends
        def __init__(self):
            self.headers, self.chunks = {"Content-Length": "1000"}, [b"x" * 10, b""]

        def read(self, size):
            return self.chunks.pop(0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Short())
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="stopped after 10 of 1000 bytes"):
        fetch.download("https://example.org/tv.pth", cache / "checkpoints" / "tv.pth")
    assert leftovers(cache) == []


def test_entry_without_url_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match=r"get r50_1x_sk0\.pth from https://github\.com/Separius.* put it at "):
        backbones.create(**config("simclr2_r50"), cache_dir=tmp_path)


def test_listing_and_download_command(tmp_path, capsys):
    cache = tmp_path / "cache"
    (cache / "checkpoints").mkdir(parents=True)
    (cache / "checkpoints" / "moco_v2_800ep_pretrain.pth.tar").write_bytes(b"0" * 2**20)
    assert cli(["backbones", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert re.search(rf"^{name}\s", out, re.MULTILINE), name
    assert re.search(r"^mocov2_r50\s.*moco\s+md5 prefix a04e12f8\s+yes, 1 MB$", out, re.MULTILINE)
    assert re.search(r"^simclr2_r50\s.*simclr2\s+none published\s+no$", out, re.MULTILINE)
    assert cli(["backbones", "--layouts"]) == 0
    assert re.search(r"^moco\s+state_dict\s+module\.encoder_q\.\s+module\.encoder_q\.fc\., module\.encoder_k",
                     capsys.readouterr().out, re.MULTILINE)
    assert cli(["backbones", "--download", "nope", "--cache-dir", str(cache)]) == 2
    assert "unknown backbone 'nope'; known: " in capsys.readouterr().err
    assert zoo.parameters("resnet50") == "23.5M"


def test_download_command_fetches_and_verifies(tmp_path, monkeypatch, capsys):
    source, sha = published_file(tmp_path)
    fake = {"mine": entry(source.as_uri(), sha256=sha), "pixels": config("pixels")}
    monkeypatch.setattr(zoo, "entries", lambda: fake)
    cache = tmp_path / "cache"
    assert cli(["backbones", "--download", "mine", "--cache-dir", str(cache)]) == 0
    assert f"sha256 {sha}, verified: published sha256" in capsys.readouterr().out
    assert leftovers(cache) == ["tv.pth", "tv.pth.sha256"]
    assert cli(["backbones", "--download", "pixels", "--cache-dir", str(cache)]) == 2
    assert "has no checkpoint file" in capsys.readouterr().err
