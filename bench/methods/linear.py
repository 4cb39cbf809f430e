"""`linear`: multinomial logistic regression with an L2 penalty, fitted by full-batch preconditioned L-BFGS.

For penalty lam the objective is scikit-learn's `LogisticRegression(C=1/lam)` objective divided by N:

    f(W, b) = mean_i CE(W x_i + b, y_i) + lam / (2 N) * ||W||^2      (the bias is not penalised)

so the same penalty reaches the same optimum. With `standardize`, the objective is taken on
features standardised with the mean and standard deviation of the examples being fitted (never of
the examples being scored), which makes one penalty grid fit every backbone's feature scale; the
returned heads fold the standardisation in, so they act on raw features. The grid (45 log-spaced
values in [1e-6, 1e5], Kornblith et al. 2019) is swept from the strongest penalty to the weakest, each
fit started where the previous optima extrapolate to (`extrapolate`). Every fit stops by a rule relative
to its penalty (`fit_one`), so warm and cold starts reach the same model, and each head records its
iterations, objective evaluations, final gradient, how it ended and with which precision that was shown.

The solver (`fit_one`) is L-BFGS with two changes to the textbook one, each measured by
benchmarks/speed.py. Its initial inverse Hessian is the model's own at the current predictions' spread,
(c Sigma + mu I)^-1 with Sigma the second moment of [x, 1] (`Preconditioner`, one eigendecomposition per fit):
correlated, constant or nearly collinear columns then cost no iterations, and the step of 1 is nearly always
accepted (one objective evaluation per iteration). Its curvature pairs carry over from one penalty to the
next: the data term's curvature does not depend on the penalty, whose own is added exactly. The two products
with X run in X's dtype (float32 above `float64_max` entries, or on a GPU), everything else (softmax, sums,
weights, L-BFGS's state) in float64; where float32 products no longer resolve the objective (weak penalties),
the fit goes on with float64 products over row chunks of X, so it still ends by the rule.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from bench import progress
from bench.methods import Heads

HISTORY = 10  # curvature pairs L-BFGS keeps (and carries from one penalty to the next)
GRAM_ROWS = 8192  # rows the preconditioner's second moment is taken on (a preconditioner need not be exact)
MAX_EIGH_DIM = 8192  # above this many features, the preconditioner keeps only Sigma's diagonal
# float32 products: a fit goes on in float64 once the decrease it expects is below COARSE_RESOLUTION of f
# (float32 logits round f at about 1e-7 of its terms), when 3 steps along a direction find no lower f, or
# after COARSE_ITERATIONS float32 iterations (a fit that needs more is resolving the rule below float32's
# rounding of the gradient); the sweep's weaker penalties then start in float64
COARSE_RESOLUTION, COARSE_ITERATIONS = 1e-6, 15


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


def class_sums(X, y, num_classes: int) -> torch.Tensor:
    """[C, D + 1] float64: the sum of [x, 1] over each class's rows (the one-hot labels' side of the gradient,
    the same at every evaluation)."""
    sums = torch.zeros(num_classes, X.shape[1] + 1, dtype=torch.float64, device=X.device)
    for start in range(0, len(X), 4096):
        x, rows = X[start:start + 4096].double(), y[start:start + 4096]
        sums[:, :-1].index_add_(0, rows, x)
        sums[:, -1].index_add_(0, rows, torch.ones_like(x[:, 0]))
    return sums


def mixed_terms(theta, X, sums, *, precise: bool = False, chunk: int = 4096):
    """The data terms at theta = [W | b] (float64, [C, D + 1]): (mean CE, its gradient [C, D + 1], A). The two
    products run in X's dtype (float64 when `precise`, X then cast in row chunks: no float64 copy of X), the
    softmax and every sum in float64. With S = `class_sums`, sum_i CE_i = sum_i logsumexp(z_i) - <theta, S>
    and the gradient is (P^T [X, 1] - S) / N. A = mean_i (diag p_i - p_i p_i^T) [C, C], the softmax's curvature,
    is the class factor of the preconditioner."""
    n = len(X)
    dtype = torch.float64 if precise else X.dtype
    step = chunk if dtype != X.dtype else n
    W, b = theta[:, :-1].to(dtype), theta[:, -1].to(dtype)
    lse, grad, A = theta.new_zeros(()), -sums, torch.zeros(len(theta), len(theta), dtype=theta.dtype, device=theta.device)
    for start in range(0, n, step):
        x = X[start:start + step].to(dtype)
        logits = torch.addmm(b, x, W.T).double()
        norm = torch.logsumexp(logits, dim=1, keepdim=True)
        lse += norm.sum()
        p = logits.sub_(norm).exp_()
        A -= p.T @ p
        grad[:, -1] += p.sum(0)
        grad[:, :-1] += (p.to(dtype).T @ x).double()
    A += torch.diag(grad[:, -1] + sums[:, -1])
    return (lse - (theta * sums).sum()) / n, grad / n, A / n


class Preconditioner:
    """L-BFGS's initial inverse Hessian: v -> (A (x) Sigma + mu I)^-1 v for v [C, D + 1], with Sigma =
    E[[x, 1] [x, 1]^T] on (a subsample of) the rows and A the softmax's mean curvature [C, C] (`mixed_terms`).
    The Hessian of f is about A (x) Sigma plus the penalty's mu (exactly so at uniform predictions), so L-BFGS
    starts from nearly the right metric whatever the features' correlations. Sigma's eigendecomposition is taken
    once per fit, A's (C x C) at each iteration. Above MAX_EIGH_DIM features, Sigma's diagonal only. Columns that
    are 0 on every row (constant before standardising) are left out, so their weights stay exactly 0."""

    def __init__(self, X):
        rows = X[::max(1, len(X) // GRAM_ROWS)]
        self.active = torch.cat([X.abs().amax(0) > 0, torch.ones(1, dtype=torch.bool, device=X.device)])
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=X.dtype, device=X.device)], dim=1)[:, self.active]
        if rows.shape[1] <= MAX_EIGH_DIM:
            self.s, self.U = torch.linalg.eigh((rows.T @ rows).double() / len(rows))
            self.s = self.s.clamp_min(0)
        else:
            self.s, self.U = rows.double().pow(2).mean(0), None

    def at(self, A, mu: float):
        """The map v -> (A (x) Sigma + mu I)^-1 v at this curvature and penalty."""
        a, V = torch.linalg.eigh(A)
        inverse = 1 / (a.clamp_min(0)[:, None] * self.s + mu)

        def apply(v):
            out = torch.zeros_like(v)
            if self.U is None:
                out[:, self.active] = V @ ((V.T @ v[:, self.active]) * inverse)
            else:
                out[:, self.active] = V @ (((V.T @ v[:, self.active] @ self.U) * inverse) @ self.U.T)
            return out
        return apply


def direction(g, pairs, mu: float, metric) -> torch.Tensor:
    """-H g by L-BFGS's two loops over `pairs` (s, y of the data term); the penalty's curvature mu is added
    to y here (the bias column unpenalised), so pairs taken at other penalties stay exact in that part."""
    def penalised(s, yd):
        out = yd + mu * s
        out[:, -1] = yd[:, -1]
        return out

    pairs = [(s, yv) for s, yv in ((s, penalised(s, yd)) for s, yd in pairs) if (s * yv).sum() > 0]
    q, steps = g.clone(), []
    for s, yv in reversed(pairs):
        rho = 1 / (s * yv).sum()
        a = rho * (s * q).sum()
        q -= a * yv
        steps.append((a, rho))
    r = metric(q)
    if pairs:  # the scalar that fits the metric to the newest pair (Nocedal and Wright, eq. 7.20, preconditioned)
        s, yv = pairs[-1]
        r *= (s * yv).sum() / (yv * metric(yv)).sum()
    for (s, yv), (a, rho) in zip(pairs, reversed(steps)):
        r += (a - rho * (yv * r).sum()) * s
    return -r


def fit_one(X, sums, lam, theta, *, max_iter: int, tol: float, rtol: float, precondition, pairs: deque,
            precise: bool = False) -> dict:
    """Minimise f in place from theta = [W | b] until both (1) the largest gradient entry is at most `tol`
    (scikit-learn's rule) and (2) ||grad f|| <= rtol * (lam / N) * ||W|| (Frobenius norms over all
    parameters), at most `max_iter` iterations; returns how the fit ended.

    Why (2): f is (lam / N)-strongly convex in W, so ||W - W*|| <= ||grad f|| / (lam / N): the rule keeps
    W within about `rtol` of its optimum, relative, at every penalty; (lam / N) W is also the size of the
    two forces that cancel at the optimum, so the rule is relative to the gradient's own scale. (1) alone
    is not: at weak penalties a warm start from the next stronger optimum already meets it. Why (1): the
    bias is not penalised, so (2) does not bound its error, which decides the predictions at strong
    penalties, where W x is small. Each iteration is a backtracking (Armijo) line search from the step of
    1 along `direction`. When the line search finds no lower objective with X's own products (float32
    rounding at weak penalties), the fit goes on with float64 products (`precise`); it stops unconverged
    only at `max_iter`, or when even those find no lower objective; the record says which, and with which
    precision the rule was checked (`certificate`)."""
    mu = lam / len(X)
    precise = precise or X.dtype == torch.float64
    loss, gd, A = mixed_terms(theta, X, sums, precise=precise)
    iterations, evaluations, coarse = 0, 1, 0  # coarse: iterations with X's own (float32) products

    def full(theta, loss, gd):  # f and its gradient from the data terms
        W = theta[:, :-1]
        g = gd.clone()
        g[:, :-1] += mu * W
        return loss + mu / 2 * W.pow(2).sum(), g

    f, g = full(theta, loss, gd)
    while True:
        force = mu * theta[:, :-1].norm()
        if not math.isfinite(f):
            stop = "diverged"
        elif g.abs().max() <= tol and g.norm() <= rtol * force:
            stop = "tol"
        elif iterations >= max_iter:
            stop = "max_iter"
        else:
            metric = precondition.at(A, mu)
            d = direction(g, pairs, mu, metric)
            slope = (g * d).sum()
            if slope >= 0:  # rounding spoilt the pairs: start the metric afresh
                pairs.clear()
                d = direction(g, pairs, mu, metric)
                slope = (g * d).sum()
            t, found = 1.0, False
            for _ in range(30 if precise else 3):
                loss_t, gd_t, A_t = mixed_terms(theta + t * d, X, sums, precise=precise)
                evaluations += 1
                f_t, g_t = full(theta + t * d, loss_t, gd_t)
                if math.isfinite(f_t) and (f_t <= f + 1e-4 * t * slope or precise and f_t <= f + 1e-10 * abs(f)
                                           and (g_t * d).sum() <= -0.8 * slope):
                    found = True  # Armijo, or where f's rounding hides the decrease, Hager and Zhang's
                    break  # approximate Wolfe condition (2005): the slope at t has not grown past 0.8 |slope|
                # the minimum of the quadratic through f, slope and f_t, kept within [t / 10, t / 2]
                curved = 2 * (f_t - f - t * slope) if math.isfinite(f_t) else math.inf
                t = min(max(-slope * t * t / curved, t / 10), t / 2) if curved > 0 else t / 10
            if found:
                pairs.append((t * d, gd_t - gd))
                theta += t * d
                loss, gd, A, f, g = loss_t, gd_t, A_t, f_t, g_t
                iterations += 1
                coarse += not precise
                if precise or (coarse < COARSE_ITERATIONS and -slope > COARSE_RESOLUTION * abs(f)):
                    continue
            if not precise:  # X's own products no longer resolve f (or the rule) here: go on in float64
                precise = True
                pairs.clear()
                loss, gd, A = mixed_terms(theta, X, sums, precise=True)
                evaluations += 1
                f, g = full(theta, loss, gd)
                continue
            stop = "no progress"
        return {"iterations": iterations, "evaluations": evaluations, "grad_max": g.abs().max().item(),
                "converged": stop == "tol", "stop": stop, "certificate": "float64" if precise else str(X.dtype)[6:],
                "rel_grad": (g.norm() / force.clamp_min(torch.finfo(torch.float64).tiny)).item()}


def moments(X, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and scale the columns are standardised with. A column with one value on these rows gets
    that value as mean (its centred values are exactly 0) and scale 1, as scikit-learn's StandardScaler:
    a clamped zero std would multiply the column's values on other rows by ~1e12."""
    if not standardize:
        return torch.zeros_like(X[0]), torch.ones_like(X[0])
    constant = X.amax(0) == X.amin(0)
    return (torch.where(constant, X[0], X.mean(0)),
            torch.where(constant, torch.ones_like(X[0]), X.std(0, correction=0)))


def extrapolate(theta, last: list[tuple], lam: float) -> None:
    """Move theta, the last optimum of the sweep, to where the secant through the last two optima
    [(penalty, theta), ...] puts penalty `lam`, in log penalty. At weak penalties the optima of nearly
    separable data grow about linearly in log(1 / lam), far from the last one; from the secant the fits
    need several times fewer iterations. Where a fit ends is decided by the stopping rule, not by its start."""
    (l0, t0), (l1, t1) = last
    if l0 > l1 > lam:
        r = math.log(l1 / lam) / math.log(l0 / l1)
        theta.copy_(t1 + r * (t1 - t0))


def fit(X, y, *, num_classes: int, points: list[dict], device, float64_max: float = 5e7,
        init: Heads | None = None) -> Heads:
    """One head per point (`penalty`, `max_iter`, `tol`, `rtol`, `standardize`), in the order of `points`; each
    head's `fits` entry says how its fit ended (`fit_one`).

    Without `init`, the points are swept from the strongest penalty to the weakest, each fit started
    from the previous optima (`extrapolate`). With `init` (heads on raw features, one per point), each point starts
    from its own head, e.g. the protocol's refit on train+val starts where the chosen point was
    validated; the heads are moved into this fit's standardisation (which differs from theirs).

    X's products run in float64 on a CPU when X has at most `float64_max` entries, else in float32 (GPUs
    other than datacentre ones run float64 at a small fraction of their float32 speed); the rest is float64
    (`mixed_terms`). The heads come back in X's working dtype.
    """
    cpu = torch.device(device).type == "cpu"
    dtype = torch.float64 if cpu and X.numel() <= float64_max else torch.float32
    if {p["standardize"] for p in points} != {points[0]["standardize"]}:
        raise ValueError("the points of one fit must agree on standardize")
    X = X.to(device, dtype, copy=True)  # our one working copy, standardised in place (peak memory: one X)
    mean, scale = moments(X, points[0]["standardize"])
    X.sub_(mean).div_(scale)
    sums = class_sums(X, y.to(device), num_classes)
    mean, scale = mean.double(), scale.double()
    precondition, pairs, precise = Preconditioner(X), deque(maxlen=HISTORY), False
    theta = torch.zeros(num_classes, X.shape[1] + 1, dtype=torch.float64, device=device)  # [W | b]
    optima, fits, path = [None] * len(points), [None] * len(points), []  # path: (penalty, theta), strongest first
    order = range(len(points)) if init is not None else sorted(range(len(points)), key=lambda i: -points[i]["penalty"])
    for i in progress.track(order, desc=f"linear probe, {len(points)} penalties", unit="penalty"):
        lam = points[i]["penalty"]
        if init is not None:  # W0 x + b0 = (W0 * scale) (x - mean) / scale + (b0 + W0 mean)
            W0, b0 = init.weight[i].to(device, torch.float64), init.bias[i].to(device, torch.float64)
            theta[:, :-1], theta[:, -1] = W0 * scale, b0 + W0 @ mean
        elif len(path) >= 2:
            extrapolate(theta, path[-2:], lam)
        fits[i] = fit_one(X, sums, lam, theta, max_iter=points[i]["max_iter"], tol=points[i]["tol"],
                          rtol=points[i]["rtol"], precondition=precondition, pairs=pairs, precise=precise)
        precise = precise or fits[i]["certificate"] == "float64"
        optima[i] = theta.clone()
        path.append((lam, optima[i]))
    theta = torch.stack(optima)
    W, b = theta[..., :-1] / scale, theta[..., -1]
    return Heads(W.to(dtype), (b - W @ mean).to(dtype), fits=fits)  # W' x + b' = W (x - mean) / scale + b
