"""Backbones: a timm architecture (`num_classes=0`, so it returns pooled penultimate features), its
weights, loaded strictly, and the preprocessing that travels with those weights.

Where the weights come from is `source` in the backbone's config (conf/backbone/*.yaml, the zoo):
- `checkpoint`: a published file (`file` in the checkpoint cache, fetched from `url` and checked against
  its published `sha256` / `md5`) or the user's own `checkpoint` path, converted from its original key
  `layout` (bench.layouts; detected when not named) to timm's keys and loaded with `strict=True`;
- `timm`: one of timm's pretrained tags (`arch: vit_small_patch16_224.dino`), with its own mean/std;
- `random`: timm's initialisation under `init_seed` (a baseline; labelled random-init wherever shown);
- `none`: no network at all, the features are the flattened preprocessed image (`arch: pixels`).

A backbone is a network and its preprocessing: this package may import bench.fetch, bench.temps,
bench.config (`seabench backbones` reads conf/backbone/) and itself, never the data, features, methods,
protocol, records, sweep, report or CLI.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision import transforms

from bench import UserError, fetch, temps
from bench.backbones import haiku, layouts

log = logging.getLogger(__name__)

INTERPOLATIONS = {"bicubic": transforms.InterpolationMode.BICUBIC,
                  "bilinear": transforms.InterpolationMode.BILINEAR}
FROM_WEIGHTS = "from_weights"  # preprocess.mean/std of a timm tag: taken from the weights' pretrained_cfg


@dataclass
class Backbone:
    name: str
    model: nn.Module
    transform: transforms.Compose
    preprocess: dict
    weights_sha256: str  # hash of the loaded tensors: what the cache key and the record use
    provenance: dict = field(default_factory=dict)  # file, url, file_sha256, how it was verified, layout


def make_transform(*, resize: int, crop: int, interpolation: str, mean, std, channels: int = 3) -> transforms.Compose:
    """The protocol's preprocessing: shorter side to `resize`, center crop `crop`, then normalise.

    `mean`/`std` null means no normalisation ([0, 1] input, as SimCLR checkpoints expect). `channels` 1 keeps
    one gray channel (`backbone=pixels` on grayscale images: the same values, a third of the columns).
    """
    if resize is None or crop is None or channels is None:
        raise UserError("preprocess resize/crop/channels null means the data's own: bench.job.sized_to_data sets it")
    if channels not in (1, 3):
        raise UserError(f"preprocess channels {channels!r}: 1 (gray) or 3 (RGB)")
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation {interpolation!r}; known: {sorted(INTERPOLATIONS)}")
    if isinstance(mean, str) or isinstance(std, str):
        raise UserError(f"preprocess mean/std {mean!r}/{std!r}: '{FROM_WEIGHTS}' only goes with source timm")
    steps = [transforms.Resize(resize, interpolation=INTERPOLATIONS[interpolation]),
             transforms.CenterCrop(crop)] + ([transforms.Grayscale(1)] if channels == 1 else []) + [transforms.ToTensor()]
    if mean is not None:
        steps.append(transforms.Normalize(list(mean), list(std)))
    return transforms.Compose(steps)


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        flat = tensor.reshape(-1)  # 0-d tensors (BN's num_batches_tracked) cannot be viewed as bytes
        digest.update(flat.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def checkpoint_path(*, cache_dir: Path, file: str) -> Path:
    return Path(cache_dir).expanduser() / "checkpoints" / file


def verified_by(path: Path, *, sha256: str | None, md5: str | None) -> str:
    if sha256 or md5:
        return f"published {'sha256' if sha256 else 'md5'}{' prefix' if len(sha256 or md5) < 32 else ''}"
    if fetch.sidecar(path).is_file():
        return "sha256 recorded when first downloaded or loaded (none published)"
    return "none (no published hash)"


def weights_file(*, name: str, file: str | None, url: str | None, homepage: str | None,
                 sha256: str | None, md5: str | None, checkpoint: str | None, cache_dir: Path) -> tuple[Path, dict]:
    """The verified local file of a backbone's weights (downloaded if needed) and its provenance."""
    if checkpoint is not None:  # the user's own file: their weights, so no published hash applies
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"checkpoint file not found: {path}")
        return path, {"file": str(path), "file_sha256": fetch.digests(path)["sha256"], "verified": "user's file"}
    if file is None:
        raise UserError(f"backbone {name} names no checkpoint file; pass backbone.checkpoint=/path/to/weights")
    path = checkpoint_path(cache_dir=cache_dir, file=file)
    hashes = {"sha256": sha256, "md5": md5}
    found = None
    if path.is_file():
        found, problem = fetch.verify(path, hashes)
        if problem and not url:
            raise UserError(f"{path} fails its hash check ({problem}): delete it (and {fetch.sidecar(path).name}) "
                            f"and put the file from {homepage or url} there again")
        if problem:
            log.warning("%s fails its hash check (%s): removing it and downloading it again", path, problem)
            path.unlink(missing_ok=True)  # a concurrent job may have removed it already
            found = None
    if found is None:
        if not url:
            raise UserError(f"the weights of backbone {name} are not on disk and have no direct download: "
                            f"get {file} from {homepage} and put it at {path}")
        found = fetch.download(url, path, hashes=hashes)
    return path, {"file": str(path), "url": url, "file_sha256": found["sha256"],
                  "verified": verified_by(path, sha256=sha256, md5=md5)}


def load_state(path: Path, *, layout: str | None, target: dict[str, torch.Tensor]) -> tuple[dict, str]:
    """(state dict in timm's keys, the layout used): read the file and convert it."""
    raw = layouts.read(path, layout)
    name = layout or layouts.detect(raw)
    if name is None:
        raise UserError(f"cannot tell the layout of {path}; name it with backbone.layout= "
                        f"(known: {', '.join(layouts.KNOWN)})")
    try:
        return layouts.convert(raw, name, target), name
    except UserError as err:
        guess = layouts.detect(raw)
        if guess in (None, name):
            raise
        raise UserError(f"{err} (the file looks like layout {guess!r}: set backbone.layout={guess})") from None


def converted_state(path: Path, *, layout: str | None, model: nn.Module, arch: str, file_sha256: str) -> tuple:
    """`load_state`, with BYOL's slow pickle conversion cached next to the file, keyed by its hash."""
    cached = path.with_name(f"{path.name}.{arch}.{file_sha256[:16]}.pt")
    if layout in (None, layouts.BYOL) and cached.is_file():  # only a BYOL file has a converted copy
        try:
            return torch.load(cached, map_location="cpu", weights_only=True), layout
        except Exception:  # noqa: BLE001 -- a damaged cache entry, whatever torch raises: convert again
            cached.unlink(missing_ok=True)
    state, layout = load_state(path, layout=layout, target=model.state_dict())
    if layout == layouts.BYOL:
        try:
            with temps.atomic(cached, "converted weights") as tmp, open(tmp, "wb") as f:
                torch.save(state, f)
        except UserError as err:  # a read-only folder, a full disk: the conversion is only a cache
            log.warning("%s (the conversion is only a cache)", err)
    return state, layout


def resnet_shape(state: dict) -> str:
    """'a ResNet with 2-2-2-2 basic blocks' for a torchvision-style state dict, else ''."""
    blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    if not all(blocks):
        return ""
    block = "bottleneck" if any(".conv3." in k for k in state) else "basic"
    return f" (it holds a ResNet with {'-'.join(map(str, blocks))} {block} blocks)"


def fill_batch_counters(state: dict, target: dict) -> dict:
    """`state` with BatchNorm's `num_batches_tracked` added where the file lacks it (state dicts saved before
    torch 0.4.1 added the counter, e.g. torchvision's older ImageNet files). Filled as torch's own
    `_BatchNorm._load_from_state_dict` does for a state dict without version metadata: with the model's
    current counter. The counter only drives momentum=None training, never an eval forward pass."""
    filled = dict(state)
    for key, counter in target.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            filled[key] = counter.clone()
    return filled


def load_strict(model: nn.Module, state: dict, *, arch: str, what: str) -> None:
    """`load_state_dict(strict=True)`, failing with every missing, unexpected and misshapen key (BatchNorm's
    batch counters excepted: `fill_batch_counters`)."""
    target = model.state_dict()
    shape, state = resnet_shape(state), fill_batch_counters(state, target)
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    misshapen = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
                 for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or misshapen:
        raise UserError(f"{what} does not fit timm's {arch}{shape}: "
                        f"{len(missing)} missing keys {missing[:6]}, {len(unexpected)} unexpected keys "
                        f"{unexpected[:6]}, {len(misshapen)} shape mismatches {misshapen[:4]}")
    model.load_state_dict(state, strict=True)


def from_timm(*, name: str, arch: str, preprocess: dict, checkpoint: str | None) -> Backbone:
    """A timm pretrained tag; `checkpoint` is a local copy of its weights file for offline machines."""
    overlay = {"file": str(Path(checkpoint).expanduser())} if checkpoint else None
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    except Exception as err:  # noqa: BLE001 -- unknown tag, no network, bad file: timm and the hub raise many types
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load timm's pretrained {arch} ({reason}); offline, download its weights "
                        f"and pass backbone.checkpoint=/path/to/file") from None
    cfg = model.pretrained_cfg
    preprocess = dict(preprocess)
    for key in ("mean", "std"):
        if preprocess.get(key) == FROM_WEIGHTS:
            preprocess[key] = [float(v) for v in cfg[key]]
    model.eval()
    provenance = {"timm_tag": arch, "hf_hub_id": cfg.get("hf_hub_id"), "url": cfg.get("url"), "file": checkpoint}
    return Backbone(name, model, make_transform(**preprocess), preprocess,
                    tensors_sha256(model.state_dict()), provenance)


def create(*, name: str, arch: str, source: str, preprocess: dict, cache_dir: Path, init_seed: int = 0,
           file: str | None = None, url: str | None = None, homepage: str | None = None,
           sha256: str | None = None, md5: str | None = None, checkpoint: str | None = None,
           layout: str | None = None, **info) -> Backbone:
    """Build the backbone named `name`; `info` holds descriptive keys (label, method, paper ...)."""
    if source == "none":
        if arch != "pixels":
            raise UserError(f"backbone {name}: source 'none' only goes with arch 'pixels', not {arch!r}")
        return Backbone(name, nn.Flatten(), make_transform(**preprocess), dict(preprocess), tensors_sha256({}))
    if source == "timm":
        return from_timm(name=name, arch=arch, preprocess=preprocess, checkpoint=checkpoint)
    transform = make_transform(**preprocess)
    if arch not in timm.list_models():
        raise UserError(f"backbone {name}: {arch!r} is not a timm architecture")
    torch.manual_seed(init_seed)  # timm initialises with the global generator
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    if source == "checkpoint":
        path, provenance = weights_file(name=name, file=file, url=url, homepage=homepage, sha256=sha256,
                                        md5=md5, checkpoint=checkpoint, cache_dir=cache_dir)
        try:
            state, provenance["layout"] = converted_state(path, layout=layout, model=model, arch=arch,
                                                          file_sha256=provenance["file_sha256"])
        except haiku.Unreadable as err:  # a downloaded file is fetched again; a user's own file is theirs
            raise UserError(f"{err}; " + ("check the file given as backbone.checkpoint" if checkpoint else
                                          "delete it and run again to download it again")) from None
        load_strict(model, state, arch=arch, what=f"checkpoint {path} (layout {provenance['layout']})")
        if checkpoint is None and not (sha256 or md5) and not fetch.sidecar(path).is_file():
            # no published hash: remember this good file's hash, so later damage on disk is caught
            fetch.record(path, provenance["file_sha256"])
    elif source == "random":
        provenance = {"init_seed": init_seed}
    else:
        raise UserError(f"backbone {name}: unknown source {source!r}; known: checkpoint, timm, random, none")
    model.eval()
    return Backbone(name, model, transform, dict(preprocess), tensors_sha256(model.state_dict()), provenance)
