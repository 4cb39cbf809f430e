import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from bench.metrics import mean_per_class, top1


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    pred = np.where(rng.random(500) < 0.6, y, rng.integers(0, 7, 500))
    assert abs(top1(torch.tensor(pred), torch.tensor(y)) - 100 * accuracy_score(y, pred)) < 1e-9
    assert abs(mean_per_class(torch.tensor(pred), torch.tensor(y)) - 100 * balanced_accuracy_score(y, pred)) < 1e-9
