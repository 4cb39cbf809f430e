"""A-FAN end to end (Chen et al., TMLR 2022; official classification code VITA-Group/CV_A-FAN).

At an intermediate stage of the backbone, the stage's output h is detached and pushed uphill on the
loss of the true labels by K sign-gradient steps of size gamma (`h <- h + gamma * sign(dL/dh)`,
optionally clipped to an L-inf ball of radius eps, off by default as in the official runs); the rest of
the network is run on the perturbed h, and the loss is 0.5 * (CE(clean) + CE(adversarial)). Official
CIFAR run (Classification/cmd/run_perturb.sh with main_perturb.py's defaults): ResNet-56, 5 steps,
gamma 0.5/255, no clip, no random start, perturb_idx 13 = the output of the FIRST of its three stages
(its sequential model is normalise, conv, bn, relu, 9 + 9 + 9 blocks, pool, flatten, linear: [0:13] ends
after stage 1's ninth block).

Our default (finetune.yaml): stage 1, the output of `layer1`, 5 steps of 0.5/255: the official run's stage
by the same rule (the first stage's output, where the perturbation still passes through every later
stage) and its step as it is, since a stage's output is a BN-normalised, ReLU'd sum of unit scale in both
networks, so an absolute step means about the same there.

`reinject` = n (off when 0) is the normalisation re-injection of A-FAN's detection and segmentation code
(Detection/py/train_sat_mix.py): the n strengths t_k = k / n (its get_sample_points) each give the clean
map carrying the moments of lerp(h, h_adv, t_k) (its mix_feature: sigma_k * (h - mu) / sigma + mu_k, mean
and sqrt(unbiased variance + 1e-5) over dim 1, the channels, at each position), and the loss is
(CE(clean) + sum_k CE(re-injected k)) / (n + 1): equal weights, the official 0.2 each at n = 4.
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
    """sigma_adv * (h - mu) / sigma + mu_adv, moments over channels (dim 1) at each position, the variance
    unbiased plus eps under the root (the official mix_feature)."""
    mu, sigma = h.mean(1, keepdim=True), (h.var(1, keepdim=True) + eps).sqrt()
    mu_adv, sigma_adv = h_adv.mean(1, keepdim=True), (h_adv.var(1, keepdim=True) + eps).sqrt()
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


def combined_loss(clean: torch.Tensor, h: torch.Tensor, labels: torch.Tensor, *, back, head, steps: int,
                  gamma: float, eps: float | None, reinject_strengths: int) -> torch.Tensor:
    """The A-FAN loss from the clean loss and the stage output h: 0.5 * (clean + CE(adversarial)), or with
    n = `reinject_strengths` the mean of the clean loss and the n re-injected maps' (module docstring). The
    perturbed maps are detached (as in the official code): the front of the network learns from the clean
    loss only."""
    adv = ascend(h, labels, lambda z: head(back(z)), steps=steps, gamma=gamma, eps=eps)
    n = reinject_strengths
    if n == 0:
        return 0.5 * (clean + F.cross_entropy(head(back(adv)).float(), labels))
    h = h.detach()
    total = clean
    for k in range(1, n + 1):
        total = total + F.cross_entropy(head(back(reinject(h, torch.lerp(h, adv, k / n)))).float(), labels)
    return total / (n + 1)
