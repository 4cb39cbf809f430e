"""A-FAN end to end (Chen et al., TMLR 2022; official classification code VITA-Group/CV_A-FAN).

At an intermediate stage of the backbone, the stage's output h is detached and pushed uphill on the
loss of the true labels by K sign-gradient steps of size gamma (`h <- h + gamma * sign(dL/dh)`,
optionally clipped to an L-inf ball of radius eps, off by default as in the official runs); the rest of
the network is run on the perturbed h, and the loss is 0.5 * (CE(clean) + CE(adversarial)). Official
CIFAR run: 5 steps, gamma 0.5/255, no clip, inside the second of its three stages.

`reinject` (the normalisation of A-FAN's detection and segmentation code) replaces the perturbed map by
the clean one carrying the perturbed moments: sigma_adv * (h - mu) / sigma + mu_adv, with mu and sigma
the mean and standard deviation over channels at each spatial position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench import UserError

STEM = ("conv1", "bn1", "act1", "maxpool")


def split(model: nn.Module, stage: int) -> tuple[nn.Module, nn.Module]:
    """(front, back) of a timm ResNet: images -> output of layer`stage` -> pooled features."""
    names = [n for n, _ in model.named_children()]
    layers = [n for n in names if n.startswith("layer")]
    if not all(n in names for n in STEM) or not layers:
        raise UserError(f"A-FAN needs a ResNet-style backbone (conv1 ... layer1..layerN); "
                        f"{type(model).__name__} has {names}")
    if not 1 <= stage < len(layers):
        raise UserError(f"afan.stage must be between 1 and {len(layers) - 1} (an intermediate stage), "
                        f"not {stage}")
    front = nn.Sequential(*(getattr(model, n) for n in STEM + tuple(layers[:stage])))
    back = nn.Sequential(*(getattr(model, n) for n in layers[stage:]), model.global_pool)
    return front, back


def reinject(h: torch.Tensor, h_adv: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """sigma_adv * (h - mu) / sigma + mu_adv, moments over channels (dim 1) at each position."""
    mu, sigma = h.mean(1, keepdim=True), (h.var(1, keepdim=True, unbiased=False) + eps).sqrt()
    mu_adv, sigma_adv = h_adv.mean(1, keepdim=True), (h_adv.var(1, keepdim=True, unbiased=False) + eps).sqrt()
    return sigma_adv * (h - mu) / sigma + mu_adv


def ascend(h: torch.Tensor, labels: torch.Tensor, rest, *, steps: int, gamma: float, eps: float | None):
    """K sign-gradient ascent steps on the detached `h`; `rest(h)` gives the logits."""
    start = h.detach()
    adv = start.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(rest(adv), labels), adv)
        adv = adv.detach() + gamma * grad.sign()
        if eps is not None:
            adv = torch.min(torch.max(adv, start - eps), start + eps)
    return adv.detach()


def adversarial_logits(h: torch.Tensor, labels: torch.Tensor, *, back, head, steps: int, gamma: float,
                       eps: float | None, reinjected: bool) -> torch.Tensor:
    """Logits of the rest of the network on the perturbed stage output. The perturbed map is detached
    (as in the official code): the front of the network learns from the clean loss only."""
    adv = ascend(h, labels, lambda z: head(back(z)), steps=steps, gamma=gamma, eps=eps)
    if reinjected:
        adv = reinject(h.detach(), adv)
    return head(back(adv))
