"""Every feature-augmentation method of the SGD family: a head trained in a stack equals the same head
trained alone, and each one learns real digits (8x8 pixels) far above chance."""

import pytest
import torch
from sklearn.datasets import load_digits

from bench.methods import afan, flow, isda, noise

BASE = {"momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64, "epochs": 3, "lamda": 0.1, "delta": 0.0}
FLOW = {"pca_dim": 8, "flow_transforms": 2, "flow_hidden": 16, "flow_epochs": 3, "flow_batch_size": 256,
        "flow_lr": 1e-3, "flow_seed": 0}
# per method: the values two heads of a stack differ in (besides seed, lr and center)
METHODS = {
    "noise": (noise, [{"sigma": 0.1}, {"sigma": 0.5}]),
    "isda-diag": (isda, [{"lambda0": 0.1, "cov": "diag", "rank": 4}, {"lambda0": 1.0, "cov": "diag", "rank": 4}]),
    "isda-lowrank": (isda, [{"lambda0": 0.5, "cov": "lowrank", "rank": 4}, {"lambda0": 0.5, "cov": "full", "rank": 4}]),
    "afan": (afan, [{"gamma": 0.1, "steps": 1, "eps": 0.0, "reinject": 0}, {"gamma": 0.2, "steps": 1, "eps": 0.3, "reinject": 4},
                    {"gamma": 0.1, "steps": 1, "eps": 0.0, "reinject": 4}]),  # the re-injected heads share a stack
    "flow": (flow, [{"mode": m, "eps": e, "norm": "l2", "steps": 1, "alpha": 1.0} | FLOW
                    for m, e in (("rand", 20.0), ("adv", 5.0), ("rand", 5.0))]),  # rand and adv heads share a stack
    "flow_linear": (flow, [{"mode": m, "eps": e, "norm": "l2", "steps": 3, "alpha": 0.5} | FLOW | {"flow_transforms": 0}
                           for m, e in (("rand", 20.0), ("adv", 1.0))]),  # whitening only
}


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float64), torch.tensor(data.target)


def points(extras):
    return [dict(BASE, seed=s, lr=lr, center=c, delta=0.1 * s) | e
            for s in (0, 3) for lr in (0.5, 1.6) for c in (False, True) for e in extras]


@pytest.mark.parametrize("name", METHODS)
def test_stacked_heads_equal_heads_trained_alone(digits, name):
    method, extras = METHODS[name]
    X, y = digits[0][:300], digits[1][:300]
    pts = points(extras)
    stacked = method.fit(X, y, num_classes=10, points=pts, device="cpu")
    assert len({round(float(w.norm()), 6) for w in stacked.weight}) == len(pts)  # the heads differ
    for i, p in enumerate(pts):
        alone = method.fit(X, y, num_classes=10, points=[p], device="cpu")
        torch.testing.assert_close(stacked.weight[i], alone.weight[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(stacked.bias[i], alone.bias[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", METHODS)
def test_learns_digits_far_above_chance(digits, name):
    """float32, as real runs; 10 classes: chance is 10%."""
    method, extras = METHODS[name]
    X, y = digits[0].float(), digits[1]
    pts = [dict(BASE, seed=0, lr=1.6, center=True, epochs=20) | e for e in extras]
    heads = method.fit(X[:1200], y[:1200], num_classes=10, points=pts, device="cpu")
    for accuracy in (heads.predict(X[1200:]) == y[1200:]).double().mean(1):
        assert accuracy > 0.85
