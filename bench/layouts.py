"""Conversions of published checkpoint layouts to timm's ResNet key names (which are torchvision's)."""

from __future__ import annotations

import torch

from bench import UserError


def unwrap(raw, key: str | None) -> dict:
    if key is None:
        return raw
    if not isinstance(raw, dict) or key not in raw:
        found = sorted(raw)[:10] if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"checkpoint has no {key!r} entry (found {found})")
    return raw[key]


def strip(state: dict, prefix: str, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Keep the keys under `prefix` (without it), minus those starting with any of `drop`."""
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in out.items() if not k.startswith(drop)}


# layout -> (top-level key holding the state dict, backbone prefix, backbone keys to drop)
LAYOUTS = {
    "moco": ("state_dict", "module.encoder_q.", ("fc.",)),
    "torchvision": (None, "", ("fc.",)),
}


def convert(raw, layout: str) -> dict[str, torch.Tensor]:
    if layout not in LAYOUTS:
        raise UserError(f"unknown checkpoint layout {layout!r}; known: {sorted(LAYOUTS)}")
    key, prefix, drop = LAYOUTS[layout]
    return strip(unwrap(raw, key), prefix, drop)
