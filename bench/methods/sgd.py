"""`sgd`: the SeA reference pipeline without augmentation, and the trainer the SGD family shares.

Reference pipeline (Qian, Xu, Hu, ECCV 2024, official code): L2-normalised features, a bias-free
linear head (torch.nn.Linear's default init, U(-1/sqrt(D), 1/sqrt(D))), loss lamda * CE(logits / lamda),
SGD with momentum and weight decay at a constant learning rate, mini-batches of a fresh permutation
every epoch (the last, smaller batch included).

Every head of the grid (and every seed) is trained at once: the weights are one tensor [G, C, D],
the per-head hyperparameters are [G, 1, 1] tensors, and a step is a few batched matrix products.
A head's seed alone fixes its initialisation and its permutations, so a head trained in a stack
gives the same result as the same head trained alone.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby

import torch
import torch.nn.functional as F

from bench.methods import Heads

SHARED = ("batch_size", "epochs")  # shape the loop: heads of one stack must agree on them
PER_HEAD = ("lr", "momentum", "weight_decay", "lamda", "delta")


def init_weight(gen: torch.Generator, num_classes: int, dim: int, dtype) -> torch.Tensor:
    bound = dim ** -0.5
    return torch.empty(num_classes, dim, dtype=dtype).uniform_(-bound, bound, generator=gen)


def loss_grad(W, x, y1, hp) -> tuple[torch.Tensor, torch.Tensor]:
    """d loss / d logits [G, B, C] and d loss / d W [G, C, D] of lamda * CE(z / lamda) with margin delta,
    where z = x W^T with delta subtracted from the true-class logit; the loss is the batch mean."""
    z = torch.einsum("gbd,gcd->gbc", x, W) - hp["delta"] * y1
    dz = (torch.softmax(z / hp["lamda"], dim=-1) - y1) / x.shape[1]
    return dz, torch.einsum("gbc,gbd->gcd", dz, x)


def train_stack(X, y, *, num_classes, points, batch_size, epochs, augment, augment_keys) -> torch.Tensor:
    n, dim = X.shape
    hp = {k: torch.tensor([p[k] for p in points], dtype=X.dtype, device=X.device).view(-1, 1, 1)
          for k in PER_HEAD + augment_keys}
    # one CPU generator per seed draws that seed's initial weights, then its permutations
    seeds = sorted({p["seed"] for p in points})
    slot = torch.tensor([seeds.index(p["seed"]) for p in points], device=X.device)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    W = torch.stack([init_weight(g, num_classes, dim, X.dtype) for g in gens]).to(X.device)[slot]
    buf = torch.zeros_like(W)
    for _ in range(epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(X.device)[slot]  # [G, N]
        for start in range(0, n, batch_size):
            idx = perms[:, start:start + batch_size]
            x, y1 = X[idx], F.one_hot(y[idx], num_classes).to(X.dtype)  # [G, B, D], [G, B, C]
            if augment:
                x = augment(W, x, y1, hp)
            _, grad = loss_grad(W, x, y1, hp)
            buf.mul_(hp["momentum"]).add_(grad + hp["weight_decay"] * W)  # torch.optim.SGD, dampening 0
            W.sub_(hp["lr"] * buf)
    return W


def train(X, y, *, num_classes: int, points: list[dict], device, augment: Callable | None = None,
          augment_keys: tuple[str, ...] = ()) -> Heads:
    """Heads [G, C, D] for `points`, in their order; stacks are formed by equal (batch_size, epochs)."""
    X = F.normalize(X.to(device), dim=1)
    y = y.to(device)
    W = torch.empty(len(points), num_classes, X.shape[1], dtype=X.dtype, device=device)
    order = sorted(range(len(points)), key=lambda i: [points[i][k] for k in SHARED])
    for shared, group in groupby(order, key=lambda i: [points[i][k] for k in SHARED]):
        group = list(group)
        W[group] = train_stack(X, y, num_classes=num_classes, points=[points[i] for i in group],
                               augment=augment, augment_keys=augment_keys, **dict(zip(SHARED, shared)))
    return Heads(W, None, normalize=True)


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    return train(X, y, num_classes=num_classes, points=points, device=device)
