"""The L-BFGS probe reaches scikit-learn's LogisticRegression optimum at the same C (= 1 / penalty)."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bench.methods import linear


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    X, y = data.data.astype(np.float64), data.target
    return X[:1000], y[:1000], X[1000:], y[1000:]


@pytest.mark.parametrize("penalty", [1.0, 100.0])
def test_probe_matches_sklearn(digits, penalty):
    Xtr, ytr, Xte, yte = digits
    scaler = StandardScaler().fit(Xtr)
    ref = LogisticRegression(C=1 / penalty, tol=1e-10, max_iter=20000).fit(scaler.transform(Xtr), ytr)
    point = {"penalty": penalty, "max_iter": 20000, "tol": 1e-10, "standardize": True}
    heads = linear.fit(torch.tensor(Xtr), torch.tensor(ytr), num_classes=10, points=[point], device="cpu")
    # our heads act on raw features; undo the folded standardisation to compare with sklearn's coefficients
    W = heads.weight[0].numpy() * scaler.scale_
    b = heads.bias[0].numpy() + heads.weight[0].numpy() @ scaler.mean_
    # the same objective value to 1e-9 (relative) and the same weights to 1e-4 of their largest entry:
    # the weakest penalties leave directions so flat that 1e-4 in W is 1e-11 in the objective
    Xs, Y1 = torch.tensor(scaler.transform(Xtr)), torch.nn.functional.one_hot(torch.tensor(ytr), 10).double()
    ours, theirs = (linear.objective(torch.tensor(w), torch.tensor(c), Xs, Y1, penalty)[0].item()
                    for w, c in [(W, b), (ref.coef_, ref.intercept_)])
    assert abs(ours - theirs) <= 1e-9 * theirs
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(W, ref.coef_, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), rtol=0, atol=1e-4 * scale)
    ours, theirs = heads.predict(torch.tensor(Xte))[0].numpy(), ref.predict(scaler.transform(Xte))
    assert (ours != theirs).sum() <= 1  # a point on the decision boundary may fall either way
    assert abs((ours == yte).mean() - (theirs == yte).mean()) <= 1 / len(yte)


def test_warm_started_sweep_equals_separate_fits(digits):
    Xtr, ytr, _, _ = digits
    X, y = torch.tensor(Xtr), torch.tensor(ytr)
    pts = [{"penalty": p, "max_iter": 20000, "tol": 1e-10, "standardize": True} for p in (1.0, 1e2, 10.0)]
    sweep = linear.fit(X, y, num_classes=10, points=pts, device="cpu")
    for i, p in enumerate(pts):
        alone = linear.fit(X, y, num_classes=10, points=[p], device="cpu")
        scale = alone.weight.abs().max()
        torch.testing.assert_close(sweep.weight[i], alone.weight[0], rtol=0, atol=1e-4 * float(scale))


def test_objective_gradient_is_the_autograd_gradient():
    torch.manual_seed(0)
    X, W, b = torch.randn(20, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    Y1 = torch.nn.functional.one_hot(torch.randint(0, 3, (20,)), 3).double()
    loss, gW, gb = linear.objective(W, b, X, Y1, 0.7)
    W.requires_grad_(True), b.requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(X @ W.T + b, Y1.argmax(1)) + 0.7 / (2 * 20) * W.pow(2).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(gW, W.grad)
    torch.testing.assert_close(gb, b.grad)
