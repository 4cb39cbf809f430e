"""`sea`: semantic adversarial augmentation of features (Qian, Xu, Hu, ECCV 2024), on the `sgd` trainer.

Per mini-batch of unit features x_i and for each head:
  1. g_i = d loss / d x_i (margin delta on the true-class logit), normalised to unit length;
  2. P_ij = softmax_j(g_i . x_j / alpha) over j != i: the softmax with P_ii zeroed and rows
     renormalised (projection onto the *other* examples of the batch), computed with the diagonal
     masked out, which is the same distribution without the underflow of a renormalised zero row;
  3. d_i = normalize(sum_j P_ij x_j); x~_i = normalize(x_i + eta * d_i);
  4. the SGD step is taken on the loss of the augmented batch only.

`augment` is that recipe, literally. Training uses `weight_grad`, the same step computed in the span
of the batch: every vector above is a combination of the batch's rows (g_i = r_i W, x~ = A x), so it
needs only the [B, C] logits, the [B, B] Gram matrix x x^T of each seed's batch (shared by that seed's
heads) and [B, B] matrices per head, never a [G, B, D] tensor: ~5x fewer flops for a grid on one seed
when the features have more dimensions than a batch has rows (ResNet features: 2048 vs 256); with fewer
dimensions than rows the literal recipe is cheaper, and is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.methods import Heads
from bench.methods.sgd import batch_grad, logit_grad, logit_grad_at, train

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


def seed_groups(slot: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    return [(s, (slot == s).nonzero().squeeze(1)) for s in slot.unique().tolist()]


def products(xs, W, slot) -> torch.Tensor:
    """x W^T [G, B, C] for each head's batch: one matrix product per seed, over all that seed's heads."""
    G, C, D = W.shape
    out = W.new_empty(G, xs.shape[1], C)
    for s, heads in seed_groups(slot):
        out[heads] = (xs[s] @ W[heads].reshape(-1, D).T).view(-1, len(heads), C).transpose(0, 1)
    return out


def weight_grad(W, xs, slot, y1, hp) -> torch.Tensor:
    """`batch_grad(W, xs, slot, y1, hp, augment)`, in the span of each batch (see the module's docstring)."""
    if not 2 <= xs.shape[1] <= xs.shape[2]:  # a batch of one; or fewer dimensions than rows, where the
        return batch_grad(W, xs, slot, y1, hp, augment)  # [B, B] products per head cost more than [B, D] ones
    eps = 1e-12  # F.normalize's floor on a norm
    xW, K = products(xs, W, slot), (xs @ xs.transpose(1, 2))[slot]  # [G, B, C], [G, B, B] Gram matrices
    # 1. g_i = r_i W (r = d loss / d logits), so g_i . x_j = r_i . xW_j and |g_i|^2 = r_i W W^T r_i
    #    (r is not rescaled: like F.normalize, a gradient shorter than eps is divided by eps, not by its norm)
    r = logit_grad_at(xW, y1, hp)
    g_norm = ((r @ (W @ W.transpose(1, 2))) * r).sum(-1).clamp_min(0).sqrt()
    # 2. scores, diagonal masked, softmax
    scores = (r @ xW.transpose(1, 2)) / (g_norm.clamp_min(eps)[..., None] * hp["alpha"])
    scores.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
    P = torch.softmax(scores, dim=-1)
    # 3. v = P x, |v_i|^2 = (P K P^T)_ii, x_i . v_i = (P K)_ii; d = v / |v|; x~ = (x + eta d) / |x + eta d| = A x
    PK = P @ K
    v_len = (PK * P).sum(-1).clamp_min(0).sqrt()  # [G, B]
    v_norm = v_len.clamp_min(eps)
    x_d, d_d = PK.diagonal(dim1=-2, dim2=-1) / v_norm, (v_len / v_norm) ** 2  # x_i . d_i, |d_i|^2 (1, or 0 if v = 0)
    eta = hp["eta"][..., 0]  # [G, 1]
    inv = 1 / (K.diagonal(dim1=-2, dim2=-1) + 2 * eta * x_d + eta ** 2 * d_d).clamp_min(0).sqrt().clamp_min(eps)
    A = (inv * eta / v_norm)[..., None] * P
    A.diagonal(dim1=-2, dim2=-1).add_(inv)
    # 4. the loss of x~ = A x: logits A xW, gradient (r~^T A) x
    M = A.transpose(1, 2) @ logit_grad_at(A @ xW, y1, hp)  # [G, B, C]
    out = torch.empty_like(W)
    for s, heads in seed_groups(slot):
        out[heads] = (M[heads].transpose(1, 2) @ xs[s]).view(len(heads), *W.shape[1:])
    return out


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    return train(X, y, num_classes=num_classes, points=points, device=device, augment=augment, augment_keys=KEYS,
                 weight_grad=weight_grad)
