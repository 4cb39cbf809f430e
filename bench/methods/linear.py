"""`linear`: multinomial logistic regression with an L2 penalty, fitted by full-batch L-BFGS.

For penalty lam the objective is scikit-learn's `LogisticRegression(C=1/lam)` objective divided by N:

    f(W, b) = mean_i CE(W x_i + b, y_i) + lam / (2 N) * ||W||^2      (the bias is not penalised)

so the same penalty reaches the same optimum. With `standardize`, the objective is taken on
features standardised with the mean and standard deviation of the examples being fitted (never of
the examples being scored), which makes one penalty grid fit every backbone's feature scale and
conditions L-BFGS; the returned heads fold the standardisation in, so they act on raw features.
The grid (45 log-spaced values in [1e-6, 1e5],
Kornblith et al. 2019) is swept from the strongest penalty to the weakest, each fit warm-started from
the previous optimum, which cuts the iterations of the weakly regularised fits.
"""

from __future__ import annotations

import torch

from bench import progress
from bench.methods import Heads


def data_terms(W, b, X, Y1):
    """The mean cross-entropy and its gradients (in closed form: cheaper than autograd for this model)."""
    n = len(X)
    logp = torch.log_softmax(torch.addmm(b, X, W.T), dim=1)
    loss = -(logp * Y1).sum() / n
    residual = logp.exp_().sub_(Y1).div_(n)  # d loss / d logits, in logp's memory: few [N, C] temporaries
    return loss, residual.T @ X, residual.sum(0)


def objective(W, b, X, Y1, lam):
    """f and its gradients: the data terms plus the penalty's."""
    n = len(X)
    loss, grad_W, grad_b = data_terms(W, b, X, Y1)
    return loss + lam / (2 * n) * W.pow(2).sum(), grad_W + (lam / n) * W, grad_b


class Memo:
    """The data terms at the last point evaluated. A warm-started fit begins where the previous one
    ended, whose data terms (the two [N, D] x [D, C] products, nearly all of an evaluation's cost) were
    just computed: only the penalty changes, so each grid point after the first saves one evaluation."""

    def __init__(self):
        self.at, self.terms = None, None

    def data_terms(self, W, b, X, Y1):
        if self.at is None or not (torch.equal(self.at[0], W) and torch.equal(self.at[1], b)):
            self.at, self.terms = (W.detach().clone(), b.detach().clone()), data_terms(W, b, X, Y1)
        return self.terms


def fit_one(X, Y1, lam, W, b, *, max_iter: int, tol: float, memo: Memo) -> None:
    """Minimise f in place from (W, b); stops when the largest gradient entry is below `tol` or the loss
    changes by less than 64 machine epsilons (scikit-learn's stopping rule for its L-BFGS)."""
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=tol,
                            tolerance_change=64 * torch.finfo(W.dtype).eps, history_size=20,
                            line_search_fn="strong_wolfe")
    n = len(X)

    def closure():  # = objective(W, b, X, Y1, lam), operation for operation
        loss, grad_W, b.grad = memo.data_terms(W, b, X, Y1)
        W.grad = grad_W + (lam / n) * W
        return loss + lam / (2 * n) * W.pow(2).sum()

    opt.step(closure)


def fit(X, y, *, num_classes: int, points: list[dict], device, float64_max: float = 5e7) -> Heads:
    """One head per point (`penalty`, `max_iter`, `tol`, `standardize`), in the order of `points`.

    Works in float64 on a CPU when X has at most `float64_max` entries (tight optima at small cost), else
    in float32 (GPUs other than datacentre ones run float64 at a small fraction of their float32 speed).
    """
    cpu = torch.device(device).type == "cpu"
    dtype = torch.float64 if cpu and X.numel() <= float64_max else torch.float32
    if {p["standardize"] for p in points} != {points[0]["standardize"]}:
        raise ValueError("the points of one fit must agree on standardize")
    X = X.to(device, dtype, copy=True)  # our one working copy, standardised in place (peak memory: one X)
    mean = X.mean(0) if points[0]["standardize"] else torch.zeros_like(X[0])
    scale = X.std(0, correction=0).clamp_min(1e-12) if points[0]["standardize"] else torch.ones_like(X[0])
    X.sub_(mean).div_(scale)
    Y1 = torch.nn.functional.one_hot(y.to(device), num_classes).to(dtype)
    W = torch.zeros(num_classes, X.shape[1], dtype=dtype, device=device)
    b = torch.zeros(num_classes, dtype=dtype, device=device)
    weights, biases, memo = [None] * len(points), [None] * len(points), Memo()
    order = sorted(range(len(points)), key=lambda i: -points[i]["penalty"])  # strong -> weak, warm start
    for i in progress.track(order, desc=f"linear probe, {len(points)} penalties", unit="penalty"):
        fit_one(X, Y1, points[i]["penalty"], W, b, max_iter=points[i]["max_iter"], tol=points[i]["tol"], memo=memo)
        weights[i], biases[i] = W.detach().clone(), b.detach().clone()
    W, b = torch.stack(weights) / scale, torch.stack(biases)
    return Heads(W, b - W @ mean)  # W' x + b' = W (x - mean) / scale + b
