"""`seabench backbones`: the checkpoint zoo, read from conf/backbone/*.yaml (the config tree is the registry).

    seabench backbones                     name, architecture, method, paper, size, layout, hash, on disk
    seabench backbones --layouts           each checkpoint layout: wrapper, backbone prefix, keys dropped
    seabench backbones --download NAME ... fetch (and verify) those checkpoints into the cache
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import timm
import torch
from omegaconf import OmegaConf

from bench import UserError, backbones, config, fetch
from bench.backbones import haiku, layouts

log = logging.getLogger(__name__)

CONF = config.CONF / "backbone"
DEFAULT_CACHE = "~/.cache/seabench"  # conf/config.yaml: cache_dir: ${oc.env:SEABENCH_CACHE,~/.cache/seabench}


def entries(conf: Path = CONF) -> dict[str, dict]:
    """Every backbone config, by file name (what `backbone=<name>` selects)."""
    out = {}
    for path in sorted(conf.glob("*.yaml")):
        cfg = OmegaConf.load(path)
        out[path.stem] = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return out


def parameters(arch: str) -> str:
    """'25.6M' parameters of a timm architecture, counted on the meta device (no memory, no weights)."""
    if arch == "pixels":
        return "-"
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=0)
    except Exception:  # noqa: BLE001 -- a tag timm does not know: shown, not fatal, in a listing
        return "?"
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"


def short_paper(paper: str | None) -> str:
    """'Chen et al. 2020 (arXiv 2003.04297)' from the config's full citation."""
    if not paper:
        return "-"
    author = paper.split(",")[0]
    arxiv = re.search(r"arXiv \S+?(?=\))", paper)
    year = re.findall(r"\b(?:19|20)\d\d\b", paper.split("(arXiv")[0])
    return f"{author} {year[-1] if year else ''} ({arxiv.group(0) if arxiv else 'no arXiv'})".replace("  ", " ")


def hash_status(entry: dict) -> str:
    if not entry.get("file"):
        return "-"
    if entry.get("sha256") or entry.get("md5"):
        kind = "sha256" if entry.get("sha256") else "md5"
        value = entry.get("sha256") or entry.get("md5")
        return f"{kind}{' prefix' if len(value) < 32 else ''} {value[:8]}"
    return "none published" if entry.get("source") == "checkpoint" else "-"


def on_disk(entry: dict, cache_dir: Path) -> str:
    if entry.get("source") == "timm":
        return "timm hub"
    if entry.get("source") != "checkpoint" or not entry.get("file"):
        return "-"
    path = backbones.checkpoint_path(cache_dir=cache_dir, file=entry["file"])
    return f"yes, {path.stat().st_size / 2**20:.0f} MB" if path.is_file() else "no"


def rows(cache_dir: Path) -> list[list[str]]:
    out = []
    for name, entry in entries().items():
        layout = entry.get("layout") or ("detected" if entry.get("source") == "checkpoint" else "-")
        out.append([name, str(entry.get("arch")), str(entry.get("method") or "-"),
                    short_paper(entry.get("paper")), parameters(str(entry.get("arch"))), layout,
                    hash_status(entry), on_disk(entry, cache_dir)])
    return out


LISTING = ["name", "arch", "method", "paper", "params", "layout", "published hash", "on disk"]


def layout_rows() -> list[list[str]]:
    rows = [[name, spec.wrapper or "(the file)" + (f" or {spec.also_under}" if spec.also_under else ""),
             spec.prefix or "-", ", ".join(spec.drop) or "-", "by order" if spec.by_order else "by name"]
            for name, spec in layouts.LAYOUTS.items()]
    return [*rows, [layouts.BYOL, "experiment_state.online_params / online_state (Haiku)", "-",
                    ", ".join(haiku.HEADS), "by order, HWIO -> OIHW"]]


def table(cells: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *cells]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def download(names: list[str], cache_dir: Path) -> None:
    known = entries()
    for name in names:
        if name not in known:
            raise UserError(f"unknown backbone {name!r}; known: {', '.join(known)}")
        entry = known[name]
        if entry.get("source") != "checkpoint" or not entry.get("file"):
            raise UserError(f"backbone {name} has no checkpoint file to download (source {entry.get('source')})")
        path, provenance = backbones.weights_file(
            name=name, file=entry["file"], url=entry.get("url"), homepage=entry.get("homepage"),
            sha256=entry.get("sha256"), md5=entry.get("md5"), checkpoint=None, cache_dir=cache_dir)
        if not fetch.sidecar(path).is_file():
            fetch.record(path, provenance["file_sha256"])
        print(f"{name}: {path} (sha256 {provenance['file_sha256']}, verified: {provenance['verified']})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seabench backbones", description=__doc__.splitlines()[0])
    parser.add_argument("--download", nargs="+", metavar="NAME", help="fetch these checkpoints into the cache")
    parser.add_argument("--layouts", action="store_true", help="show how each checkpoint layout is converted")
    parser.add_argument("--cache-dir", default=os.environ.get("SEABENCH_CACHE", DEFAULT_CACHE),
                        help="the cache_dir of conf/config.yaml (default: $SEABENCH_CACHE or %(default)s)")
    args = parser.parse_args(argv)
    cache_dir = Path(args.cache_dir).expanduser()
    if args.download:
        download(args.download, cache_dir)
        return 0
    if args.layouts:
        print(table(layout_rows(), ["layout", "state dict under", "backbone prefix", "dropped", "matched"]))
        return 0
    print(table(rows(cache_dir), LISTING))
    return 0
