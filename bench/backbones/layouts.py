"""Published checkpoint layouts, converted to timm's ResNet keys (which are torchvision's).

Most releases are a PyTorch ResNet under a prefix, next to heads we discard: those convert by name
(`LAYOUTS`). Every key of the file must be either the backbone or a known discard, so a file of
another method fails with its keys listed instead of loading half a network.

Two releases come from TensorFlow / JAX code whose layer names are not torchvision's: the SimCLR v2
PyTorch conversion (`net.0.0.weight`, ...) and BYOL's Haiku pickle. They convert *by order*: the
source's convolution and batch-norm layers, sorted into the order the network computes them, are
paired one to one with the timm model's layers in module order, and every pair must agree in kind
and shape. Nothing is listed by hand, so the same code serves any ResNet depth.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import UserError


@dataclass(frozen=True)
class Layout:
    wrapper: str | None     # top-level entry holding the state dict (None: the file is the state dict)
    prefix: str             # the backbone's keys start with this; it is removed
    drop: tuple[str, ...]   # key prefixes the release is known to hold besides the backbone: discarded
    signature: str          # a backbone key that identifies the layout when the user names none
    by_order: bool = False  # layer names are not torchvision's: pair layers by order (see module doc)
    also_under: str | None = None  # a bare state dict may also come wrapped under this entry


# Sources: each repository's model code and loading instructions (cited in conf/backbone/*.yaml).
LAYOUTS = {
    # facebookresearch/moco main_moco.py saves {state_dict, optimizer, epoch, arch}; PCL keeps MoCo's builder
    "moco": Layout("state_dict", "module.encoder_q.",
                   ("module.encoder_q.fc.", "module.encoder_k.", "module.queue"), "module.encoder_q.conv1.weight"),
    # facebookresearch/simsiam: encoder.fc is the projector MLP
    "simsiam": Layout("state_dict", "module.encoder.", ("module.encoder.fc.", "module.predictor."),
                      "module.encoder.conv1.weight"),
    # facebookresearch/swav (also DeepCluster-v2, SeLa-v2): a bare DistributedDataParallel state dict; its
    # eval_linear.py also takes one under "state_dict" (`if "state_dict" in state_dict: state_dict = ...`)
    "swav": Layout(None, "module.", ("module.projection_head.", "module.prototypes."), "module.conv1.weight",
                   also_under="state_dict"),
    # HobbitLong/PyContrast (InfoMin, InsDis, PIRL): {opt, model, model_ema, ...}; heads are module.head*
    # (networks/build_backbone.py; its detection/convert_pretrained.py reads model['module.encoder.*'])
    "pycontrast": Layout("model", "module.encoder.", ("module.head",), "module.encoder.conv1.weight"),
    # hankook/AugSelf transfer_linear_eval.py: ckpt['backbone'] is a torchvision ResNet with fc = Identity
    "augself": Layout("backbone", "", (), "conv1.weight"),
    # tonylins/simclr-converter convert.py: torch.save({'state_dict': model.state_dict()})
    "simclr1": Layout("state_dict", "", ("fc.",), "conv1.weight"),
    # Separius/SimCLRv2-Pytorch convert.py: {'resnet': ..., 'head': ...}; resnet.fc is the supervised head.
    # Its resnet.py (copied in kaipak/SimCLRv2-PyTorch simclr/modules/resnetv2.py): stem net.0 = (conv, BN),
    # stages net.1-4 .blocks.N with .projection (shortcut conv, bn) registered before .net (conv, BN) x 3
    "simclr2": Layout("resnet", "", ("fc.",), "net.0.0.weight", by_order=True),
    # torchvision / DINO / Barlow Twins: a bare torchvision state dict (with or without fc)
    "torchvision": Layout(None, "", ("fc.",), "conv1.weight"),
}
BYOL = "byol"  # DeepMind's JAX/Haiku pickle, read by bench.haiku
KNOWN = sorted([*LAYOUTS, BYOL])


def read(path: Path, layout: str | None):
    """The file's contents: a torch checkpoint (loaded without running code), or BYOL's pickle."""
    from bench.backbones import haiku

    if layout == BYOL or (layout is None and haiku.looks_like(path)):
        return haiku.read(path)
    try:
        # PyContrast stores its argparse options next to the weights; a Namespace only sets attributes
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- a truncated or foreign file: torch raises many types
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if unsafe:
            raise UserError(f"checkpoint {path} holds a Python object of type {unsafe.group(1)}, which seabench "
                            f"does not unpickle (it could run code); save its state dict alone") from None
        reason = str(err).strip().splitlines()[0][:200]
        raise haiku.Unreadable(f"cannot read checkpoint {path} ({reason}): it is truncated or not a PyTorch "
                               f"checkpoint") from None


def detect(raw) -> str | None:
    """The layout whose signature key the file holds, or None."""
    from bench.backbones import haiku

    if haiku.is_byol(raw):
        return BYOL
    for name, layout in LAYOUTS.items():
        try:
            state = unwrap(raw, layout, name)
        except UserError:
            continue
        if layout.signature in state:
            return name
    return None


def convert(raw, layout: str, target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's backbone under timm's key names; `target` (the timm model's state dict) sets order/shapes."""
    from bench.backbones import haiku

    if layout == BYOL:
        return by_order(haiku.units(raw), target, layout)
    if layout not in LAYOUTS:
        raise UserError(f"unknown checkpoint layout {layout!r}; known: {', '.join(KNOWN)}")
    spec = LAYOUTS[layout]
    state = unwrap(raw, spec, layout)
    kept = by_name(state, spec, layout)
    return by_order(group(kept), target, layout) if spec.by_order else kept


def unwrap(raw, spec: Layout, layout: str) -> dict:
    wrapper = spec.wrapper
    if wrapper is None and spec.also_under and isinstance(raw, dict) and isinstance(raw.get(spec.also_under), dict):
        wrapper = spec.also_under
    state = raw if wrapper is None else (raw.get(wrapper) if isinstance(raw, dict) else None)
    if not isinstance(state, dict):
        found = sorted(map(str, raw))[:10] if isinstance(raw, dict) else type(raw).__name__
        where = f"{wrapper!r} entry" if wrapper else "state dict"
        raise UserError(f"the checkpoint has no {where} as layout {layout!r} expects (found {found})")
    return state


def by_name(state: dict, spec: Layout, layout: str) -> dict[str, torch.Tensor]:
    """The backbone's tensors with `spec.prefix` removed; any key neither backbone nor known discard fails."""
    kept, unknown = {}, []
    for key, value in state.items():
        if key.startswith(spec.drop):
            continue
        if key.startswith(spec.prefix) and isinstance(value, torch.Tensor):
            kept[key[len(spec.prefix):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise UserError(f"the checkpoint holds keys that layout {layout!r} does not know "
                        f"({len(unknown)}: {unknown[:8]}); name the right layout with backbone.layout=")
    if not kept:
        raise UserError(f"the checkpoint holds no backbone keys under {spec.prefix!r} (layout {layout!r})")
    return kept


def group(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {parameter: tensor}} from flat `module.parameter` keys, in file order."""
    units: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        units.setdefault(module, {})[param] = tensor
    return units


SHORTCUT = re.compile(r"shortcut|projection|downsample")
NORM = re.compile(r"batch_?norm|^bn")


def order_key(module: str) -> tuple:
    """Where a layer comes in the computation, from its name alone.

    Per path component: (first shortcut component of the path, its last number, batch norm after its conv).
    So numbered layers go in number order, `conv_1` before `batchnorm_1`, and a block's projection
    shortcut after its main path, which is where timm registers `downsample`. TF and Haiku code (and
    so SimCLR v2's and BYOL's names) create the shortcut first, which is why file order is not used.
    """
    key, in_shortcut = [], False
    for part in (p for p in re.split(r"[./]", module) if p not in ("", "~")):
        starts_shortcut = not in_shortcut and bool(SHORTCUT.search(part))
        in_shortcut |= starts_shortcut
        numbers = re.findall(r"\d+", part)
        key.append((starts_shortcut, int(numbers[-1]) if numbers else -1, bool(NORM.search(part))))
    return tuple(key)


def kind(params: dict[str, torch.Tensor]) -> str:
    return "batch norm" if "running_mean" in params else "convolution" if params["weight"].ndim == 4 else "other"


def by_order(units: dict[str, dict[str, torch.Tensor]], target: dict[str, torch.Tensor],
             layout: str) -> dict[str, torch.Tensor]:
    """Pair the source's layers (in computation order) with timm's (in module order), checking each pair."""
    source = sorted(units.items(), key=lambda item: order_key(item[0]))
    wanted = list(group(target).items())
    if len(source) != len(wanted):
        raise UserError(f"the {layout} checkpoint has {len(source)} convolution/batch-norm layers but the "
                        f"timm model has {len(wanted)}: it is another architecture")
    out = {}
    for (name, params), (target_name, target_params) in zip(source, wanted):
        if kind(params) != kind(target_params) or params["weight"].shape != target_params["weight"].shape:
            raise UserError(f"the {layout} checkpoint's layer {name} ({kind(params)}, "
                            f"{tuple(params['weight'].shape)}) does not fit timm's {target_name} "
                            f"({kind(target_params)}, {tuple(target_params['weight'].shape)}): another architecture")
        extra = set(params) - set(target_params)
        if extra:
            raise UserError(f"the {layout} checkpoint's layer {name} has tensors timm's {target_name} "
                            f"lacks: {sorted(extra)}")
        for param, like in target_params.items():
            if param == "num_batches_tracked" and param not in params:
                params = {**params, param: torch.zeros_like(like)}  # a training counter, unused in eval
            if param in params:
                out[f"{target_name}.{param}"] = params[param]
    return out
