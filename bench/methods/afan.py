"""`afan`: adversarial feature augmentation (A-FAN; Chen et al. 2021, official code VITA-Group/CV_A-FAN)
on the last layer, on the `sgd` trainer.

As its classification code (`attack_algo.PGD`): starting from the (detached) features x of the batch,
`steps` ascent steps x <- x + gamma * sign(d loss / d x) through the current head with the true labels,
an optional clip to the L-inf ball of radius eps around x (off by default, as there: eps 0 = off), then
one SGD step on 0.5 * (loss(clean) + loss(adversarial)). The loss is the trainer's lamda * CE(z / lamda).

Units (ours): the features are unit vectors in D dimensions, so gamma and eps are given per coordinate in
units of 1 / sqrt(D): one step moves a feature by an L2 length of gamma, whatever D.

`mix` (off when 0) is the normalisation re-injection of A-FAN's detection / segmentation code: with
t = mix, the adversarial example becomes sigma_t * (x - mu) / sigma + mu_t, where (mu, sigma) are the
moments of the clean x and (mu_t, sigma_t) those of the interpolant lerp(x, x_adv, t). The official code
takes them per channel over a feature map; on pooled vectors there is no spatial axis, so here they are
per example over the feature dimensions (our adaptation).
"""

from __future__ import annotations

import torch

from bench.methods import Heads
from bench.methods.sgd import logit_grad, train

KEYS = ("gamma", "eps", "mix")
STACK = ("steps",)  # heads with different step counts are trained in different stacks: none waits on another
FLOOR = 1e-12  # on a standard deviation


def ascend(W, x, y1, hp, steps: int) -> torch.Tensor:
    """x after `steps` sign-gradient ascent steps of the loss of each head (and the optional clip)."""
    unit = x.shape[-1] ** -0.5
    step, radius, clip = hp["gamma"] * unit, hp["eps"] * unit, hp["eps"] > 0
    x_adv = x
    for _ in range(steps):
        grad = torch.einsum("gbc,gcd->gbd", logit_grad(W, x_adv, y1, hp), W)  # d loss / d x, up to a positive factor
        x_adv = x_adv + step * grad.sign()
        if clip.any():
            x_adv = torch.where(clip, torch.minimum(torch.maximum(x_adv, x - radius), x + radius), x_adv)
    return x_adv


def moments(x) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each example over its feature dimensions."""
    return x.mean(-1, keepdim=True), x.std(-1, correction=0, keepdim=True).clamp_min(FLOOR)


def mix(x, x_adv, t) -> torch.Tensor:
    """sigma_t * (x - mu) / sigma + mu_t with the moments of x and of lerp(x, x_adv, t)."""
    mu, sigma = moments(x)
    mu_t, sigma_t = moments(x + t * (x_adv - x))
    return sigma_t * (x - mu) / sigma + mu_t


def weight_grad(W, xs, slot, y1, hp) -> torch.Tensor:
    x = xs[slot]
    x_adv = ascend(W, x, y1, hp, hp["steps"])
    if (hp["mix"] > 0).any():
        x_adv = torch.where(hp["mix"] > 0, mix(x, x_adv, hp["mix"]), x_adv)
    both = torch.cat([x, x_adv], dim=1)  # [G, 2B, D]: the mean loss of its 2B rows is 0.5 * (clean + adversarial)
    return torch.einsum("gbc,gbd->gcd", logit_grad(W, both, y1.repeat(1, 2, 1), hp), both)


def setup(X, y, *, num_classes, points, seeds) -> dict:
    return {"steps": points[0]["steps"]}


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    return train(X, y, num_classes=num_classes, points=points, device=device, augment_keys=KEYS,
                 weight_grad=weight_grad, setup=setup, stack_keys=STACK)
