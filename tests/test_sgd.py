"""The stacked SGD trainer: per head, the same as that head trained alone, and as a plain reference loop."""

import pytest
import torch
from reference import reference_train
from sklearn.datasets import load_digits

from bench.methods import sea, sgd

BASE = {"momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64, "epochs": 3, "lamda": 0.1, "delta": 0.0,
        "center": False}


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return torch.tensor(data.data[:300], dtype=torch.float64), torch.tensor(data.target[:300])


def points(extra):
    return [dict(BASE, seed=s, lr=lr, center=c) | extra for s in (0, 3) for lr in (0.5, 1.6) for c in (False, True)]


@pytest.mark.parametrize("method,extra", [(sgd, {}), (sea, {"eta": 0.4, "alpha": 0.05, "delta": 0.2})])
def test_stacked_heads_equal_heads_trained_alone(digits, method, extra):
    X, y = digits
    pts = points(extra)
    stacked = method.fit(X, y, num_classes=10, points=pts, device="cpu")
    for i, p in enumerate(pts):
        alone = method.fit(X, y, num_classes=10, points=[p], device="cpu")
        torch.testing.assert_close(stacked.weight[i], alone.weight[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(stacked.bias[i], alone.bias[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method,extra", [(sgd, {}), (sea, {"eta": 0.4, "alpha": 0.05, "delta": 0.2})])
def test_stacked_heads_equal_the_reference_loop(digits, method, extra):
    X, y = digits
    pts = points(extra)
    heads = method.fit(X, y, num_classes=10, points=pts, device="cpu")
    assert len({round(float(w.norm()), 6) for w in heads.weight}) == len(pts)  # the heads differ
    # float64 throughout; SeA's sharp softmax (alpha 0.05) amplifies rounding differences a little
    for i, p in enumerate(pts):
        W, shift = reference_train(X, y, num_classes=10, **p)
        torch.testing.assert_close(heads.weight[i], W, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(heads.bias[i], -W @ shift, rtol=1e-6, atol=1e-8)


def test_training_lowers_the_loss_and_predicts(digits):
    X, y = digits
    p = dict(BASE, seed=0, lr=1.6, epochs=30)
    heads = sgd.fit(X, y, num_classes=10, points=[p], device="cpu")
    assert (heads.predict(X)[0] == y).double().mean() > 0.95
