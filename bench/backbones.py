"""Backbones: a timm architecture (`num_classes=0`, so it returns pooled penultimate features), its
weights, loaded strictly, and the preprocessing that travels with those weights.

Where the weights come from is `source` in the backbone's config:
- `random`: timm's initialisation under `init_seed` (a baseline; labelled random-init wherever shown);
- `checkpoint`: a file in the checkpoint cache (`file`, from `url`) or a local `checkpoint` path,
  converted from its original key `layout` to timm's keys and loaded with `strict=True`;
- `none`: no network at all, the features are the flattened preprocessed image (`arch: pixels`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from torchvision import transforms

from bench import UserError

log = logging.getLogger(__name__)

INTERPOLATIONS = {"bicubic": transforms.InterpolationMode.BICUBIC,
                  "bilinear": transforms.InterpolationMode.BILINEAR}


@dataclass
class Backbone:
    name: str
    model: nn.Module
    transform: transforms.Compose
    preprocess: dict
    weights_sha256: str  # hash of the loaded tensors: what the cache key and the record use


def make_transform(*, resize: int, crop: int, interpolation: str, mean, std) -> transforms.Compose:
    """The protocol's preprocessing: shorter side to `resize`, center crop `crop`, then normalise.

    `mean`/`std` null means no normalisation ([0, 1] input, as SimCLR checkpoints expect).
    """
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"unknown interpolation {interpolation!r}; known: {sorted(INTERPOLATIONS)}")
    steps = [transforms.Resize(resize, interpolation=INTERPOLATIONS[interpolation]),
             transforms.CenterCrop(crop), transforms.ToTensor()]
    if mean is not None:
        steps.append(transforms.Normalize(list(mean), list(std)))
    return transforms.Compose(steps)


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_path(*, name: str, file: str | None, url: str | None, checkpoint: str | None,
                    cache_dir: Path) -> Path:
    """The local checkpoint file: the user's own `checkpoint`, or the zoo's `file` in the cache."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"checkpoint file not found: {path}")
        return path
    path = Path(cache_dir).expanduser() / "checkpoints" / file
    if not path.is_file():
        raise UserError(f"the weights of backbone {name} are not on disk: download {url} and put it at {path}")
    return path


def load_state(path: Path, layout: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and convert it from `layout` to timm's ResNet keys."""
    from bench import layouts

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many types
        raise UserError(f"cannot read checkpoint {path}: {err}") from None
    return layouts.convert(raw, layout)


def create(*, name: str, arch: str, source: str, preprocess: dict, cache_dir: Path, init_seed: int = 0,
           file: str | None = None, url: str | None = None, checkpoint: str | None = None,
           layout: str | None = None, **info) -> Backbone:
    """Build the backbone named `name`; `info` holds descriptive keys (label, paper ...) not needed here."""
    transform = make_transform(**preprocess)
    if source == "none":
        if arch != "pixels":
            raise UserError(f"backbone {name}: source 'none' only goes with arch 'pixels', not {arch!r}")
        return Backbone(name, nn.Flatten(), transform, dict(preprocess), tensors_sha256({}))
    if arch not in timm.list_models():
        raise UserError(f"backbone {name}: {arch!r} is not a timm architecture")
    torch.manual_seed(init_seed)  # timm initialises with the global generator
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    if source == "checkpoint":
        path = checkpoint_path(name=name, file=file, url=url, checkpoint=checkpoint, cache_dir=cache_dir)
        state = load_state(path, layout)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UserError(f"checkpoint {path} does not fit {arch} after conversion from layout {layout!r}: "
                            f"missing keys {result.missing_keys}, unexpected keys {result.unexpected_keys}")
    elif source != "random":
        raise UserError(f"backbone {name}: unknown source {source!r}; known: checkpoint, random, none")
    model.eval()
    return Backbone(name, model, transform, dict(preprocess), tensors_sha256(model.state_dict()))
