"""`linear`: multinomial logistic regression with an L2 penalty, fitted by full-batch L-BFGS.

For penalty lam the objective is scikit-learn's `LogisticRegression(C=1/lam)` objective divided by N:

    f(W, b) = mean_i CE(W x_i + b, y_i) + lam / (2 N) * ||W||^2      (the bias is not penalised)

so the same penalty reaches the same optimum. With `standardize`, the objective is taken on
features standardised with the mean and standard deviation of the examples being fitted (never of
the examples being scored), which makes one penalty grid fit every backbone's feature scale and
conditions L-BFGS; the returned heads fold the standardisation in, so they act on raw features.
The grid (45 log-spaced values in [1e-6, 1e5],
Kornblith et al. 2019) is swept from the strongest penalty to the weakest, each fit warm-started from
the previous optima, which cuts the iterations of the weakly regularised fits. Every fit stops by a
rule relative to its penalty (`fit_one`), so warm and cold starts reach the same model, and each
head records its iterations, final gradient and whether it converged.
"""

from __future__ import annotations

import math

import torch

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
    """The data terms at the last point evaluated (the two [N, D] x [D, C] products, nearly all of an
    evaluation's cost). Each L-BFGS iteration asks for the point it starts from twice more (our stopping
    check, then L-BFGS's own first call), and that point is where the last line search ended: the memo
    computes it once."""

    def __init__(self):
        self.at, self.terms = None, None

    def data_terms(self, W, b, X, Y1):
        if self.at is None or not (torch.equal(self.at[0], W) and torch.equal(self.at[1], b)):
            self.at, self.terms = (W.detach().clone(), b.detach().clone()), data_terms(W, b, X, Y1)
        return self.terms


def fit_one(X, Y1, lam, W, b, *, max_iter: int, tol: float, rtol: float, memo: Memo) -> dict:
    """Minimise f in place from (W, b) until both (1) the largest gradient entry is at most `tol`
    (scikit-learn's rule) and (2) ||grad f|| <= rtol * (lam / N) * ||W|| (Frobenius norms over all
    parameters), at most `max_iter` L-BFGS iterations; returns how the fit ended.

    Why (2): f is (lam / N)-strongly convex in W, so ||W - W*|| <= ||grad f|| / (lam / N): the rule keeps
    W within about `rtol` of its optimum, relative, at every penalty; (lam / N) W is also the size of the
    two forces that cancel at the optimum, so the rule is relative to the gradient's own scale. (1) alone
    is not: at weak penalties a warm start from the next stronger optimum already meets it, and L-BFGS
    returned after 0 iterations (on digits pixels the 20 weakest penalties were one model). Why (1): the
    bias is not penalised, so (2) does not bound its error, which decides the predictions at strong
    penalties, where W x is small. A fit stops early, unconverged, only at `max_iter` or when a line
    search finds no lower objective at all (rounding: float32 meets this at weak penalties, where f
    changes below its precision); the returned record says which."""
    n = len(X)
    k = n / lam  # we minimise k f (same optimum): the penalty's curvature is then 1 at every penalty, which
    # keeps torch's fixed thresholds (curvature pairs with y's > 1e-10) meaningful at weak penalties

    def closure():  # = k * objective(W, b, X, Y1, lam), operation for operation
        loss, grad_W, grad_b = memo.data_terms(W, b, X, Y1)
        W.grad, b.grad = (grad_W + (lam / n) * W) * k, grad_b * k
        return (loss + lam / (2 * n) * W.pow(2).sum()) * k

    # one iteration per step() (its state carries over), so the rule is checked after every iteration;
    # max_eval: torch's default for max_iter 25 (25 line-search evaluations); no stop on small changes
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=1, max_eval=26, tolerance_grad=0, tolerance_change=0,
                            history_size=20, line_search_fn="strong_wolfe")
    iterations = 0
    while True:
        closure()  # the gradient at (W, b): the memo's data terms, no new products
        grad = torch.cat([W.grad.flatten(), b.grad.flatten()]) / k
        force = (lam / n) * W.norm()
        if grad.abs().max() <= tol and grad.norm() <= rtol * force:
            stop = "tol"
        elif iterations >= max_iter:
            stop = "max_iter"
        else:
            before = W.clone(), b.clone()
            opt.step(closure)
            iterations += 1
            if not (torch.equal(before[0], W) and torch.equal(before[1], b)):
                continue
            stop = "no progress"
        return {"iterations": iterations, "grad_max": grad.abs().max().item(), "converged": stop == "tol",
                "stop": stop, "rel_grad": (grad.norm() / force.clamp_min(torch.finfo(W.dtype).tiny)).item()}


def moments(X, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and scale the columns are standardised with. A column with one value on these rows gets
    that value as mean (its centred values are exactly 0) and scale 1, as scikit-learn's StandardScaler:
    a clamped zero std would multiply the column's values on other rows by ~1e12."""
    if not standardize:
        return torch.zeros_like(X[0]), torch.ones_like(X[0])
    constant = X.amax(0) == X.amin(0)
    return (torch.where(constant, X[0], X.mean(0)),
            torch.where(constant, torch.ones_like(X[0]), X.std(0, correction=0)))


def extrapolate(W, b, last: list[tuple], lam: float) -> None:
    """Move (W, b), the last optimum of the sweep, to where the secant through the last two optima
    [(penalty, W, b), ...] puts penalty `lam`, in log penalty. At weak penalties the optima of nearly
    separable data grow about linearly in log(1 / lam), far from the last one; from the secant the fits
    need 4 to 6x fewer iterations (the demo's digits sweeps: 2095 -> 546 pixels, 6309 -> 1078 random
    ResNet). Where a fit ends is decided by the stopping rule, not by its start."""
    (l0, W0, b0), (l1, W1, b1) = last
    if l0 > l1 > lam:
        r = math.log(l1 / lam) / math.log(l0 / l1)
        W.copy_(W1 + r * (W1 - W0)), b.copy_(b1 + r * (b1 - b0))


def fit(X, y, *, num_classes: int, points: list[dict], device, float64_max: float = 5e7,
        init: Heads | None = None) -> Heads:
    """One head per point (`penalty`, `max_iter`, `tol`, `rtol`, `standardize`), in the order of `points`; each
    head's `fits` entry says how its fit ended (`fit_one`).

    Without `init`, the points are swept from the strongest penalty to the weakest, each fit started
    from the previous optima (`extrapolate`). With `init` (heads on raw features, one per point), each point starts
    from its own head, e.g. the protocol's refit on train+val starts where the chosen point was
    validated; the heads are moved into this fit's standardisation (which differs from theirs).

    Works in float64 on a CPU when X has at most `float64_max` entries (tight optima at small cost), else
    in float32 (GPUs other than datacentre ones run float64 at a small fraction of their float32 speed).
    """
    cpu = torch.device(device).type == "cpu"
    dtype = torch.float64 if cpu and X.numel() <= float64_max else torch.float32
    if {p["standardize"] for p in points} != {points[0]["standardize"]}:
        raise ValueError("the points of one fit must agree on standardize")
    X = X.to(device, dtype, copy=True)  # our one working copy, standardised in place (peak memory: one X)
    mean, scale = moments(X, points[0]["standardize"])
    X.sub_(mean).div_(scale)
    Y1 = torch.nn.functional.one_hot(y.to(device), num_classes).to(dtype)
    W = torch.zeros(num_classes, X.shape[1], dtype=dtype, device=device)
    b = torch.zeros(num_classes, dtype=dtype, device=device)
    weights, biases, fits, memo = [None] * len(points), [None] * len(points), [None] * len(points), Memo()
    path = []  # (penalty, W, b) of the sweep so far, strongest first
    order = range(len(points)) if init is not None else sorted(range(len(points)), key=lambda i: -points[i]["penalty"])
    for i in order:
        lam = points[i]["penalty"]
        if init is not None:  # W0 x + b0 = (W0 * scale) (x - mean) / scale + (b0 + W0 mean)
            W0, b0 = init.weight[i].to(device, dtype), init.bias[i].to(device, dtype)
            W.copy_(W0 * scale), b.copy_(b0 + W0 @ mean)
        elif len(path) >= 2:
            extrapolate(W, b, path[-2:], lam)
        fits[i] = fit_one(X, Y1, lam, W, b, max_iter=points[i]["max_iter"], tol=points[i]["tol"],
                          rtol=points[i]["rtol"], memo=memo)
        weights[i], biases[i] = W.detach().clone(), b.detach().clone()
        path.append((lam, weights[i], biases[i]))
    W, b = torch.stack(weights) / scale, torch.stack(biases)
    return Heads(W, b - W @ mean, fits=fits)  # W' x + b' = W (x - mean) / scale + b
