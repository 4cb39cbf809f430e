"""The two accuracies every record stores; each dataset's config names which one its table uses.

Tensor methods only, no `import torch`: the CLI checks a metric's name before it loads torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def top1(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of examples whose predicted class is the label."""
    return 100.0 * (pred == y).double().mean().item()


def mean_per_class(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the classes present in `y` of the percentage of that class predicted correctly."""
    classes, inverse = y.unique(return_inverse=True)
    hits = (pred == y).double()
    correct = hits.new_zeros(len(classes)).index_add_(0, inverse, hits)
    counts = inverse.bincount(minlength=len(classes)).double()
    return 100.0 * (correct / counts).mean().item()


METRICS = {"top1": top1, "mean_per_class": mean_per_class}


def score(name: str, pred: torch.Tensor, y: torch.Tensor) -> float:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name](pred, y)
