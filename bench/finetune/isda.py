"""ISDA end to end (Wang et al., NeurIPS 2019; official code blackfeather-wang/ISDA-for-Deep-Networks).

Each class's feature mean and covariance are estimated online from the (detached) pooled features of
the training batches: a batch's per-class mean m_b and covariance S_b (divided by the count n_b, as the
official estimator does) are merged into the running (n, m, S) with weight w = n_b / (n + n_b):

    S <- (1 - w) S + w S_b + w (1 - w) (m - m_b)(m - m_b)^T,   m <- (1 - w) m + w m_b,   n <- n + n_b,

which is exactly the (biased) covariance of every feature seen so far. The loss is the cross-entropy of
the logits z_j + (lambda / 2) (w_j - w_y)^T S_y (w_j - w_y), gradients flowing into the head's weights
and, through z, into the backbone; lambda = lambda0 * epoch / epochs. `cov: full` is the paper's main form
and the official CIFAR code's; `diag` keeps only the variances (the official ImageNet code's choice: C x D
instead of C x D x D numbers); `auto` (the default) is full where C x D x D fits the memory rule of the
frozen-feature ISDA (bench.methods.isda.LIMIT numbers), else diag (`resolve`; each training run in the record
says which it used). The covariance update and the quadratic term run in float32 with autocast off: inside
bf16 autocast on a GPU they were off by about 2e-3 relative to float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COVS = ("auto", "full", "diag")
LIMIT = 2 ** 28  # numbers a full estimator may hold (bench.methods.isda's memory rule; the package may not import it)


def resolve(cov: str, *, num_classes: int, dim: int) -> str:
    """`auto` -> full where C x D x D fits LIMIT, else diag; any other value as it is."""
    if cov != "auto":
        return cov
    return "full" if num_classes * dim * dim <= LIMIT else "diag"


class Estimator(nn.Module):
    """Running class means [C, D], covariances [C, D, D] (or variances [C, D]) and counts [C], as buffers
    so that they travel in the training checkpoint."""

    def __init__(self, num_classes: int, dim: int, cov: str):
        super().__init__()
        self.kind = resolve(cov, num_classes=num_classes, dim=dim)
        self.diag = self.kind == "diag"
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(num_classes, dim))
        shape = (num_classes, dim) if self.diag else (num_classes, dim, dim)
        self.register_buffer("cov", torch.zeros(shape))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(features.device.type, enabled=False):  # float32, even inside bf16 autocast
            self._update(features.detach().to(self.mean.dtype), labels)

    def _update(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        for c in labels.unique().tolist():
            xc = x[labels == c]
            n_b = len(xc)
            m_b = xc.mean(0)
            d = xc - m_b
            S_b = (d * d).mean(0) if self.diag else d.T @ d / n_b
            w = n_b / (self.count[c].item() + n_b)
            gap = self.mean[c] - m_b
            between = gap * gap if self.diag else torch.outer(gap, gap)
            self.cov[c] = (1 - w) * self.cov[c] + w * S_b + w * (1 - w) * between
            self.mean[c] = (1 - w) * self.mean[c] + w * m_b
            self.count[c] += n_b


def spread(weight: torch.Tensor, cov: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, C]: (w_j - w_y)^T S_y (w_j - w_y) for every example (class y) and class j."""
    W = weight.to(cov.dtype)
    if cov.dim() == 2:  # diagonal: expand the square, so no [B, C, D] tensor is built
        var = cov[labels]  # [B, D]
        Wy = W[labels]
        return var @ (W * W).T - 2 * (var * Wy) @ W.T + (var * Wy * Wy).sum(1, keepdim=True)
    out = torch.empty(len(labels), len(W), dtype=W.dtype, device=W.device)
    for c in labels.unique().tolist():
        dW = W - W[c]
        out[labels == c] = ((dW @ cov[c]) * dW).sum(1)
    return out


def loss(logits: torch.Tensor, weight: torch.Tensor, cov: torch.Tensor, labels: torch.Tensor,
         ratio: float) -> torch.Tensor:
    """The ISDA surrogate loss; `ratio` = lambda at this epoch. In float32 (or the statistics' dtype if wider),
    with autocast off: the quadratic term is a difference of large products."""
    dtype = torch.promote_types(cov.dtype, torch.float32)
    with torch.autocast(logits.device.type, enabled=False):
        augmented = logits.to(dtype) + 0.5 * ratio * spread(weight.to(dtype), cov.to(dtype), labels)
        return F.cross_entropy(augmented, labels)


def ratio(*, lambda0: float, step: int, steps: int, batch_size: int, n: int) -> float:
    """lambda0 * epoch / epochs, epochs counted in passes over the n training images (the official ramp)."""
    epochs = max(1, -(-steps * batch_size // n))
    return lambda0 * (step * batch_size // n) / epochs
