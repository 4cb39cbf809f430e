"""`noise`: isotropic Gaussian noise on the features, on the `sgd` trainer: the ablation every feature
augmentation must beat.

Each step trains on x + sigma / sqrt(D) * e, e ~ N(0, I_D), in place of the unit features x: the noise
has expected length sigma (the features have length 1), whatever the dimension D. The noise of a step
is drawn once per seed (from a generator of that seed's own) and scaled by each head's sigma, so a head
gets the same noise in a stack as alone, and a whole grid on one seed costs one draw per step.
"""

from __future__ import annotations

import torch

from bench.methods import Heads
from bench.methods.sgd import grad_of, logit_grad_at, logits_of, train

KEYS = ("sigma",)
STREAM = 7919  # offset of the noise generators' seeds from the heads' own (which draw weights, then batches)


def generators(X, y, *, num_classes, points, seeds) -> dict:
    return {"noise_gens": [torch.Generator(device=X.device).manual_seed(s + STREAM) for s in seeds]}


def draw(gens, shape, like: torch.Tensor) -> torch.Tensor:
    """One standard normal tensor of `shape` per generator, stacked: [S, *shape]."""
    return torch.stack([torch.randn(shape, generator=g, device=like.device, dtype=like.dtype) for g in gens])


def weight_grad(W, xs, slot, y1, hp) -> torch.Tensor:
    """With a = sigma / sqrt(D): the logits (x + a e) W^T = x W^T + a e W^T and the gradient
    r^T x + a r^T e, from the seeds' batches and draws side by side [S, 2B, D], never a per-head copy."""
    B = xs.shape[1]
    a = hp["sigma"] * xs.shape[-1] ** -0.5  # [G, 1, 1]
    both = torch.cat([xs, draw(hp["noise_gens"], xs.shape[1:], xs)], dim=1)  # [S, 2B, D]: x, then e
    z = logits_of(both, W, slot)
    r = logit_grad_at(torch.addcmul(z[:, :B], a, z[:, B:]), y1, hp)
    return grad_of(torch.cat([r, a * r], dim=1), both, slot)


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    return train(X, y, num_classes=num_classes, points=points, device=device, augment_keys=KEYS,
                 weight_grad=weight_grad, setup=generators)
