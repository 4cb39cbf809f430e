"""The two accuracies every record stores; each dataset's config names which one its table uses."""

import torch


def top1(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of examples whose predicted class is the label."""
    return 100.0 * (pred == y).double().mean().item()


def mean_per_class(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the classes present in `y` of the percentage of that class predicted correctly."""
    classes, inverse = torch.unique(y, return_inverse=True)
    correct = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, (pred == y).double())
    counts = torch.bincount(inverse, minlength=len(classes)).double()
    return 100.0 * (correct / counts).mean().item()


METRICS = {"top1": top1, "mean_per_class": mean_per_class}


def score(name: str, pred: torch.Tensor, y: torch.Tensor) -> float:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name](pred, y)
