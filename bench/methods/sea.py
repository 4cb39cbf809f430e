"""`sea`: semantic adversarial augmentation of features (Qian, Xu, Hu, ECCV 2024), on the `sgd` trainer.

Per mini-batch of unit features x_i and for each head:
  1. g_i = d loss / d x_i (margin delta on the true-class logit), normalised to unit length;
  2. P_ij = softmax_j(g_i . x_j / alpha) over j != i: the softmax with P_ii zeroed and rows
     renormalised (projection onto the *other* examples of the batch), computed with the diagonal
     masked out, which is the same distribution without the underflow of a renormalised zero row;
  3. d_i = normalize(sum_j P_ij x_j); x~_i = normalize(x_i + eta * d_i);
  4. the SGD step is taken on the loss of the augmented batch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.methods import Heads
from bench.methods.sgd import logit_grad, train

KEYS = ("eta", "alpha")


def direction(x: torch.Tensor, grad: torch.Tensor, alpha) -> torch.Tensor:
    """d [G, B, D] from unit features x [G, B, D], their loss gradients and temperature alpha."""
    g = F.normalize(grad, dim=-1) / alpha  # [G, B, D] is no larger than the [G, B, B] scores
    scores = torch.einsum("gid,gjd->gij", g, x)
    scores.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    return F.normalize(torch.softmax(scores, dim=-1) @ x, dim=-1)


def augment(W, x, y1, hp) -> torch.Tensor:
    if x.shape[1] < 2:  # a batch of one has no other example to move towards
        return x
    grad = torch.einsum("gbc,gcd->gbd", logit_grad(W, x, y1, hp), W)  # d loss / d x
    return F.normalize(x + hp["eta"] * direction(x, grad, hp["alpha"]), dim=-1)


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    return train(X, y, num_classes=num_classes, points=points, device=device, augment=augment, augment_keys=KEYS)
