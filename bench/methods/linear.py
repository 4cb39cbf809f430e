"""`linear`: multinomial logistic regression with an L2 penalty, fitted by full-batch preconditioned L-BFGS.

For penalty lam the objective is scikit-learn's `LogisticRegression(C=1/lam)` objective divided by N:

    f(W, b) = mean_i CE(W x_i + b, y_i) + lam / (2 N) * ||W||^2      (the bias is not penalised)

so the same penalty reaches the same optimum. With `standardize`, the objective is taken on
features standardised with the mean and standard deviation of the examples being fitted (never of
the examples being scored), which makes one penalty grid fit every backbone's feature scale; the
returned heads fold the standardisation in, so they act on raw features. The grid (45 log-spaced
values in [1e-6, 1e5], Kornblith et al. 2019) is swept from the strongest penalty to the weakest; each
fit starts at the previous optimum, where the data terms are already known (no evaluation), and takes its
first step to where the last two optima's estimates extrapolate to (`extrapolate`). Every fit stops by a rule relative
to its penalty (`fit_one`), so warm and cold starts reach the same model, and each head records its
iterations, objective evaluations, final gradient, how it ended and with which precision that was shown.

The solver (`fit_one`) is L-BFGS with three changes to the textbook one, each measured by
benchmarks/speed.py (docs/performance.md). It runs in coordinates where the model's own Hessian at the
current predictions' spread is block diagonal and its inverse is cheap (`Preconditioner`: the weights
rotated into the eigenvectors of the features' covariance, the bias shifted by the features' mean and
left unpenalised): correlated, constant or nearly collinear columns and the bias's own scale then cost no
iterations, and the step of 1 is nearly always accepted (one objective evaluation per iteration). Its
curvature pairs carry over from one penalty to the next: the data term's curvature does not depend on
the penalty, whose own is added exactly. The two products with X run in X's dtype (float32 above
`float64_max` entries, or on a GPU), everything else (softmax, sums, weights, L-BFGS's state) in float64;
both terms come from the residual P - Y, so float32's rounding shrinks as the fit gets better; float32
shows the rule only with a margin over its own measured rounding, and where it cannot, the fit goes on
with float64 products over row chunks of X, so it still ends by the rule. X itself is never copied:
the standardisation is folded into the weights the products use (peak memory).
"""

from __future__ import annotations

import math
from collections import deque

import torch

from bench import progress
from bench.methods import NOT_FITTED, Heads

# curvature pairs L-BFGS keeps (and carries from one penalty to the next): as many as fit in PAIR_VALUES float64
# values, within [HISTORY_MIN, HISTORY_MAX] (measured at 40 against 10: evaluations per sweep 345 -> 279 at
# 45000x96, 323 -> 288 at 7200x784; none fewer at 25000x2048 with 101 classes, where 10 pairs are 33 MB)
HISTORY_MIN, HISTORY_MAX, PAIR_VALUES = 10, 40, 2**22
GRAM_ROWS = 8192  # rows the preconditioner's second moment is taken on (a preconditioner need not be exact)
MAX_EIGH_DIM = 8192  # above this many features, the preconditioner keeps only Sigma's diagonal
# float32 products (fit_one): the rule is shown with them only if it holds with MARGIN times float32's measured
# rounding of the gradient to spare; a fit goes on in float64 where the rule's bounds come within that margin,
# when 3 steps along a direction find no lower f, or after COARSE_ITERATIONS float32 iterations; the sweep's
# weaker penalties then start in float64
COARSE_ITERATIONS, MARGIN = 30, 4
# on a CPU every product runs over row chunks of at least CHUNK rows and about CHUNK_ELEMENTS values, which keeps the
# float64 cast and the [C, rows] logits in cache (measured per evaluation on the 2-core machine: 45000x96 9.1 ms
# chunked vs 15.9 ms whole, 7200x784 7.6 vs 12.4 ms, 25000x2048 equal; 1024 rows 15% faster than 4096 at 2048-d)
CHUNK, CHUNK_ELEMENTS = 1024, 2**19
# on a GPU there is no cache to stay in, and each chunk costs ~12 kernel launches: chunks of up to 2^27 values
# (1 GiB as float64), a Food-101-sized X in 1 or 2 (not yet measured: no GPU was lent to issue 19)
GPU_CHUNK_ELEMENTS = 2**27
CURVATURE_EVERY = 4  # the softmax's curvature A (the preconditioner's class factor) is taken on every 4th chunk


def rows_per_chunk(X) -> int:
    return max(CHUNK, (CHUNK_ELEMENTS if X.device.type == "cpu" else GPU_CHUNK_ELEMENTS) // max(1, X.shape[1]))


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


def mixed_terms(theta, X, y, mean=None, scale=None, *, precise: bool = False, chunk: int | None = None):
    """The data terms at theta = [W | b] (float64, [C, D + 1]) on the standardised features (X - mean) / scale
    (by default X itself): (mean CE, its gradient [C, D + 1], A). X is never standardised or copied: the
    standardisation is folded into the weights the products use, W / scale and b - (W / scale) mean, and
    out of the gradient. The two products run in X's dtype over row chunks (float64 when `precise`: no
    float64 copy of X), the softmax and every sum in float64. Both the loss and the gradient come from the
    residual side, so that their rounding is relative to their own size, not to the probabilities': CE_i =
    -log p_i[y_i] from the chunk's log-probabilities, and the gradient from (P - Y)^T [X, 1] / N, with
    P - Y rounded to X's dtype (where the fit is good P - Y is small, and float32 products show the rule
    at weaker penalties: measured on the 25,000 x 2048 shape, a sweep's float32-shown fits went from 18
    to 33 of 45). A = mean_i (diag p_i - p_i p_i^T) [C, C], the softmax's curvature, is the class factor
    of the preconditioner, which need not be exact: it is taken on every CURVATURE_EVERY-th chunk (its
    [C, rows] x [rows, C] products over every chunk were measured at 5% of an evaluation at 25000x2048 with
    101 classes, 9% at 45000x96)."""
    n = len(X)
    dtype = torch.float64 if precise else X.dtype
    step = chunk or rows_per_chunk(X)
    W, b = theta[:, :-1], theta[:, -1]
    if scale is not None:
        W = W / scale
        b = b - W @ mean
    W, b = W.to(dtype), b[:, None].to(dtype)
    loss, grad = theta.new_zeros(()), torch.zeros_like(theta)
    A = torch.zeros(len(theta), len(theta), dtype=theta.dtype, device=theta.device)
    minus_one = torch.full((1, min(n, step)), -1.0, dtype=torch.float64, device=X.device)
    counted = 0  # rows A is taken on
    for start in range(0, n, step):
        x, labels = X[start:start + step].to(dtype), y[start:start + step, None].T
        logp = torch.addmm(b, W, x.T).double()  # [C, rows]: BLAS runs W x^T faster than x W^T
        logp -= torch.logsumexp(logp, dim=0, keepdim=True)
        loss -= logp.gather(0, labels).sum()
        p = logp.exp_()
        if start % (CURVATURE_EVERY * step) == 0:
            A -= p @ p.T
            A.diagonal().add_(p.sum(1))
            counted += len(x)
        p.scatter_add_(0, labels, minus_one[:, :len(x)])  # the residual P - Y
        grad[:, -1] += p.sum(1)
        grad[:, :-1] += (p.to(dtype) @ x).double()
    if scale is not None:
        grad[:, :-1] -= grad[:, -1:] * mean
        grad[:, :-1] /= scale
    return loss / n, grad / n, A / counted


class Preconditioner:
    """L-BFGS's coordinates and initial inverse Hessian. With m and Sigma the mean and covariance of x (on a
    subsample of rows) and A the softmax's mean curvature [C, C] (`mixed_terms`), the Hessian of f is about

        A (x) E[[x, 1] [x, 1]^T] + mu (the penalty, on W only),

    exactly so at uniform predictions. In the coordinates u = [W U | b + W m] (U: Sigma's eigenvectors) it is
    block diagonal: A (x) diag(s) + mu I for the weights and A alone for the unpenalised bias, whose inverse
    costs one C x C eigendecomposition per iteration (`metric`). L-BFGS runs in these coordinates (its inner
    products are the same in any coordinates when steps map as `tangent` and gradients as `cotangent`), so
    correlated, constant or nearly collinear columns cost no iterations, nor does the bias's own scale (at
    strong penalties the bias decides the predictions and moves far while W barely does); one rotation by U
    per iteration each way. Sigma's eigendecomposition is taken once per fit; above MAX_EIGH_DIM features,
    only its diagonal (U = I). Columns left out of `active` (constant on the fitted rows: `moments`) get
    no step, so their weights stay exactly 0."""

    def __init__(self, X, mean, scale, active):
        """On the standardised features (X - mean) / scale, of which only the `active` columns are fitted
        (`moments`)."""
        self.active = active
        rows = X[::max(1, len(X) // GRAM_ROWS)][:, active]  # a copy: standardised and centred in place
        rows.sub_(mean[active].to(rows.dtype)).div_(scale[active].to(rows.dtype))
        self.m = rows.mean(0).double()  # (not sum(dtype=float64): that casts all the rows first)
        rows -= self.m.to(rows.dtype)
        if rows.shape[1] <= MAX_EIGH_DIM:
            gram, count = rows.T @ rows, len(rows)
            del rows  # (peak memory: the eigendecomposition's workspace comes next)
            self.s, self.U = torch.linalg.eigh(gram.double() / count)
            self.s = self.s.clamp_min(0)
        else:
            self.s, self.U = rows.pow(2).mean(0).double(), None

    def rotate(self, w, back: bool = False):
        return w if self.U is None else w @ (self.U.T if back else self.U)

    def cotangent(self, g):
        """A gradient [C, D + 1] in L-BFGS's coordinates [C, active + 1]."""
        return torch.cat([self.rotate(g[:, :-1][:, self.active] - g[:, -1:] * self.m), g[:, -1:]], dim=1)

    def tangent(self, s):
        """A step [C, D + 1] in L-BFGS's coordinates [C, active + 1]."""
        w = s[:, :-1][:, self.active]
        return torch.cat([self.rotate(w), s[:, -1:] + w @ self.m[:, None]], dim=1)

    def step(self, d):
        """A step in L-BFGS's coordinates back in [W | b] [C, D + 1]."""
        w = self.rotate(d[:, :-1], back=True)
        out = d.new_zeros(len(d), len(self.active) + 1)
        out[:, :-1][:, self.active] = w
        out[:, -1] = d[:, -1] - w @ self.m
        return out

    def metric(self, A, mu: float):
        """The map v -> (the Hessian above)^-1 v in L-BFGS's coordinates, at this curvature and penalty. A's
        null direction (the same shift of every class's bias, which changes no prediction) gets A's largest
        eigenvalue, so a gradient's rounding along it is not blown up."""
        a, V = torch.linalg.eigh(A)
        a = a.clamp_min(0)
        weights = 1 / (a[:, None] * self.s + mu)
        bias = 1 / torch.where(a > 1e-8 * a.max(), a, a.max().clamp_min(mu))

        def apply(v):
            return torch.cat([V @ ((V.T @ v[:, :-1]) * weights), V @ ((V.T @ v[:, -1:]) * bias[:, None])], dim=1)
        return apply


def curvature_pair(s, yd) -> tuple:
    """A pair for `direction`: the step s and the change yd of the data term's gradient, with the two
    numbers it needs of them at any penalty mu (s . (yd + mu s_W) = s . yd + mu |s_W|^2)."""
    return s, yd, torch.dot(s.flatten(), yd.flatten()).item(), s[:, :-1].pow(2).sum().item()


def direction(g, pairs, mu: float, metric) -> torch.Tensor:
    """-H g by L-BFGS's two loops over `pairs` (`curvature_pair`s of the data term); the penalty's curvature
    mu is added to y here (the bias column unpenalised), so pairs taken at other penalties stay exact in
    that part. The penalised y is never formed: its products are the data term's plus mu times the step's
    (7 small operations a pair instead of about 20; at 45000x96 with 40 pairs this bookkeeping was 15% of a
    sweep)."""
    used = [(s, yd, 1 / (sy + mu * ss)) for s, yd, sy, ss in pairs if sy + mu * ss > 0]
    q, steps = g.clone(), []
    for s, yd, rho in reversed(used):
        a = rho * torch.dot(s.flatten(), q.flatten()).item()
        q.add_(yd, alpha=-a)
        q[:, :-1].add_(s[:, :-1], alpha=-a * mu)
        steps.append(a)
    r = metric(q)
    if used:  # the scalar that fits the metric to the newest pair (Nocedal and Wright, eq. 7.20, preconditioned)
        s, yd, rho = used[-1]
        yv = yd.clone()
        yv[:, :-1].add_(s[:, :-1], alpha=mu)
        r *= (1 / rho) / torch.dot(yv.flatten(), metric(yv).flatten())
    for (s, yd, rho), a in zip(used, reversed(steps)):
        sr = torch.dot(s.flatten(), r.flatten()) - torch.dot(s[:, -1], r[:, -1])  # s_W . r_W
        b = rho * (torch.dot(yd.flatten(), r.flatten()) + mu * sr).item()
        r.add_(s, alpha=a - b)
    return -r


def fit_one(X, y, lam, theta, *, max_iter: int, tol: float, rtol: float, precondition, pairs: deque,
            state: dict, frame: tuple, guess=None) -> dict:
    """Minimise f in place from theta = [W | b] until both (1) the largest gradient entry is at most `tol`
    (scikit-learn's rule) and (2) ||grad f|| <= rtol * (lam / N) * ||W|| (Frobenius norms over all
    parameters), at most `max_iter` iterations; returns how the fit ended.

    Why (2): f is (lam / N)-strongly convex in W, so ||W - W*|| <= ||grad f|| / (lam / N): the rule keeps
    W within about `rtol` of its optimum, relative, at every penalty; (lam / N) W is also the size of the
    two forces that cancel at the optimum, so the rule is relative to the gradient's own scale. (1) alone
    is not: at weak penalties a warm start from the next stronger optimum already meets it. Why (1): the
    bias is not penalised, so (2) does not bound its error, which decides the predictions at strong
    penalties, where W x is small. Where no column varies on the fitted rows (a degenerate backbone), W
    is held at exactly 0, which is W*, so (2) holds by construction and (1) alone decides (it would
    otherwise never hold, and each fit would run to `max_iter`).

    Each iteration is a line search along `direction` (the first to `guess`, if given) from the step of 1:
    Armijo's condition, or where f's rounding hides the decrease, Hager and Zhang's approximate Wolfe
    condition (2005). `state` carries across the sweep's fits: whether X's products run in float64
    (`precise`), the data terms at theta if the last fit ended there (`terms`), and float32's rounding of
    the gradient (`rounding`). With float32 products the rule is shown in float32 only with a margin of
    MARGIN times that rounding, measured as the gap to a float64 gradient at a similar |W| (`certify`);
    where the rule's bounds come within that margin, or float32 no longer finds a lower objective, the
    fit and the sweep's weaker penalties go on with float64 products. A fit stops unconverged only at
    `max_iter`, or when even float64 products find no lower objective; the record says which, and with
    which precision the rule was shown (`certificate`)."""
    mu = lam / len(X)
    fitted = bool(precondition.active.any())  # else W = W* = 0 exactly: rule (2) holds, and (1) decides
    state["precise"] = state.get("precise", False) or X.dtype == torch.float64
    state.setdefault("rounding", None)
    iterations, evaluations, coarse = 0, 0, 0  # coarse: iterations with X's own (float32) products
    if state.get("terms") is not None and (state["terms"][0] or not state["precise"]):
        exact, loss, gd, A = state["terms"]  # the data terms at theta, from the fit that ended there
    else:
        loss, gd, A = mixed_terms(theta, X, y, *frame, precise=state["precise"])
        exact, evaluations = state["precise"], 1  # exact: the terms come from float64 products

    def full(theta, loss, gd):  # f and its gradient from the data terms
        W = theta[:, :-1]
        g = gd.clone()
        g[:, :-1] += mu * W
        return loss + mu / 2 * W.pow(2).sum(), g

    def precise_terms():
        nonlocal loss, gd, A, f, g, gt, evaluations, exact
        loss, gd, A = mixed_terms(theta, X, y, *frame, precise=True)
        evaluations, exact = evaluations + 1, True
        f, g = full(theta, loss, gd)
        gt = precondition.cotangent(g)

    def to_float64():  # float32 cannot show the rule from here: this fit and the weaker ones go on in float64
        state["precise"] = True
        pairs.clear()
        if not exact:
            precise_terms()

    f, g = full(theta, loss, gd)
    gt = precondition.cotangent(g)  # g in L-BFGS's coordinates
    metric, shown = None, None
    while True:
        force = mu * theta[:, :-1].norm()
        bounds = (tol, rtol * force.item() if fitted else math.inf)  # of max |g| and ||g||
        if not math.isfinite(f):
            stop = "diverged"
            break
        width, rounding = theta[:, :-1].norm().item(), state.get("rounding")
        fresh = rounding is not None and rounding["width"] / 2 <= width <= 2 * rounding["width"]
        if not state["precise"] and fresh and (MARGIN * rounding["max"] >= bounds[0] / 2
                                               or MARGIN * rounding["norm"] >= bounds[1] / 2):
            to_float64()  # the rule's bounds are within float32's measured rounding at this penalty
        meets = g.abs().max() <= bounds[0] and g.norm() <= bounds[1]
        if meets and exact:
            stop, shown = "tol", "float64"
            break
        if meets and not fresh:  # measure float32's rounding of the gradient here: the gap to float64's
            g32 = g
            precise_terms()
            state["rounding"] = {"width": width, "max": (g - g32).abs().max().item(), "norm": (g - g32).norm().item()}
            continue
        if meets and (g.abs().max() + MARGIN * rounding["max"] <= bounds[0]
                      and g.norm() + MARGIN * rounding["norm"] <= bounds[1]):
            stop, shown = "tol", str(X.dtype)[6:]
            break
        if iterations >= max_iter:
            stop = "max_iter"
            break
        if metric is None or iterations % 8 == 0:
            metric = precondition.metric(A, mu)
        if guess is not None:  # the first step goes to the guess: its evaluation also gives a curvature pair
            d, guess = guess - theta, None
            dt = precondition.tangent(d)
        else:
            dt = direction(gt, pairs, mu, metric)
            d = precondition.step(dt)
        slope = (g * d).sum()
        if slope >= 0:  # rounding spoilt the pairs: start the metric afresh
            pairs.clear()
            dt = direction(gt, pairs, mu, metric)
            d = precondition.step(dt)
            slope = (g * d).sum()
        resolution = 1e-10 if state["precise"] else 1e-6  # f's relative rounding with these products
        t, found = 1.0, False
        for _ in range(30 if state["precise"] else 3):
            loss_t, gd_t, A_t = mixed_terms(theta + t * d, X, y, *frame, precise=state["precise"])
            evaluations += 1
            f_t, g_t = full(theta + t * d, loss_t, gd_t)
            if math.isfinite(f_t) and (f_t <= f + 1e-4 * t * slope or f_t <= f + resolution * abs(f)
                                       and (g_t * d).sum() <= -0.8 * slope):
                found = True  # Armijo, or Hager and Zhang's approximate Wolfe condition: f not above f's
                break  # rounding, and the slope at t has not grown past 0.8 |slope|
            # the minimum of the quadratic through f, slope and f_t, kept within [t / 10, t / 2]
            curved = 2 * (f_t - f - t * slope) if math.isfinite(f_t) else math.inf
            t = min(max(-slope * t * t / curved, t / 10), t / 2) if curved > 0 else t / 10
        if found:
            gt_t = precondition.cotangent(g_t)
            yd = gt_t - gt  # the data term's part of the change in gradient: less the penalty's
            yd[:, :-1] -= (mu * t) * dt[:, :-1]
            pairs.append(curvature_pair(t * dt, yd))
            theta += t * d
            loss, gd, A, f, g, gt = loss_t, gd_t, A_t, f_t, g_t, gt_t
            exact = state["precise"]
            iterations += 1
            coarse += not state["precise"]
            if state["precise"] or coarse < COARSE_ITERATIONS:
                continue
        if state["precise"]:
            stop = "no progress"
            break
        to_float64()  # float32 products no longer make progress here
    state["terms"] = (exact, loss, gd, A)
    # where the optimum is: one more L-BFGS step from here, not taken (no evaluation); the sweep extrapolates
    # from these estimates (`extrapolate`: on average nearer the optima than the fits' ends, measured)
    step = direction(gt, pairs, mu, metric or precondition.metric(A, mu)) if stop == "tol" else None
    state["estimate"] = theta + precondition.step(step) if step is not None else theta.clone()
    return {"iterations": iterations, "evaluations": evaluations, "grad_max": g.abs().max().item(),
            "converged": stop == "tol", "stop": stop,
            "certificate": shown or ("float64" if exact else str(X.dtype)[6:]),
            "rounding": state["rounding"]["norm"] if shown == "float32" else None,
            "rel_grad": (g.norm() / force.clamp_min(torch.finfo(torch.float64).tiny)).item() if fitted else None}


def moments(X, standardize: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, scale, active) of X's columns, in float64 over row chunks (no copy of X): the mean and scale
    the columns are standardised with, and the columns not constant on these rows (the others are not
    fitted: with the bias unpenalised, a constant column's optimal weight is 0). A constant column gets its
    value as mean (its centred values are exactly 0) and scale 1, as scikit-learn's StandardScaler: a
    clamped zero std would multiply the column's values on other rows by ~1e12. Without `standardize`,
    mean 0 and scale 1."""
    active = X.amax(0) > X.amin(0)  # (reductions: no temporary of X's size)
    mean, scale = X.new_zeros(X.shape[1], dtype=torch.float64), X.new_ones(X.shape[1], dtype=torch.float64)
    if standardize:
        step = rows_per_chunk(X)
        chunks = [X[start:start + step] for start in range(0, len(X), step)]
        mean = sum(c.double().sum(0) for c in chunks) / len(X)
        scale = (sum((c.double() - mean).pow_(2).sum(0) for c in chunks) / len(X)).sqrt_()
        mean = torch.where(active, mean, X[0].double())
        scale = torch.where(active, scale, torch.ones_like(scale))
    return mean, scale, active


def extrapolate(theta, last: list[tuple], lam: float) -> None:
    """Move theta, the last optimum of the sweep, to where the secant through the last two optima
    [(penalty, theta), ...] puts penalty `lam`, in log penalty. At weak penalties the optima of nearly
    separable data grow about linearly in log(1 / lam), far from the last one; with the secant as first
    step the fits need several times fewer iterations (and its evaluation gives L-BFGS a curvature pair
    along the path). The two points are the estimates of the optima one untaken L-BFGS step beyond where
    their fits ended (`fit_one`): a fit ends anywhere within its rule (||W - W*|| about 1% of ||W||), and
    the secant through the ends doubles that error (the guesses of a 25000x2048 sweep landed at 1.1 to 1.8%,
    just outside the rule, each then needing two more iterations); through the estimates, evaluations per
    sweep went 147 -> 128 at 25000x2048, 289 -> 270 at 7200x784, 287 -> 256 at 45000x96. Where a fit ends
    is decided by the stopping rule, not by its start."""
    (l0, t0), (l1, t1) = last
    if l0 > l1 > lam:
        r = math.log(l1 / lam) / math.log(l0 / l1)
        theta.copy_(t1 + r * (t1 - t0))


def fit(X, y, *, num_classes: int, points: list[dict], device, float64_max: float = 1e6,
        init: Heads | None = None, rate=None) -> Heads:
    """One head per point (`penalty`, `max_iter`, `tol`, `rtol`, `standardize`, optionally `early_end`), in the
    order of `points`; each head's `fits` entry says how its fit ended (`fit_one`).

    Without `init`, the points are swept from the strongest penalty to the weakest, each fit started
    from the previous optimum, its first step to where the last two extrapolate to (`extrapolate`).
    An option, off by default (`early_end` 0): with `early_end` n > 0 and `rate` (a head's weight [C, D]
    and bias [C] -> its val score, higher better, given by the protocol), the sweep ends once n penalties
    in a row score below the best so far (`EarlyEnd`); the points after that are not fitted: their heads
    are 0 and their `fits` entries say `stop: early end`, which the protocol leaves out of its choice. With
    `init` (heads on raw features, one per point), each point starts from its own head, e.g. the protocol's refit on train+val starts where the chosen point was
    validated; the heads are moved into this fit's standardisation (which differs from theirs).

    X's products run in float64 on a CPU when X has at most `float64_max` entries, else in float32 (GPUs
    other than datacentre ones run float64 at a small fraction of their float32 speed); the rest is float64
    (`mixed_terms`). The heads come back in float64 in the first case, else in float32.
    """
    precise = torch.device(device).type == "cpu" and X.numel() <= float64_max
    if {p["standardize"] for p in points} != {points[0]["standardize"]}:
        raise ValueError("the points of one fit must agree on standardize")
    patience = points[0].get("early_end", 0) if init is None and rate is not None else 0
    if patience and any({**p, "penalty": None} != {**points[0], "penalty": None} for p in points):
        raise ValueError("early_end ends a sweep over the penalty alone: its points must agree on every other value")
    # no working copy (peak memory): X is used as it is, standardised in the products (`mixed_terms`)
    X = X.to(device, X.dtype if precise and X.dtype in (torch.float32, torch.float64) else torch.float32)
    y = y.to(device)
    mean, scale, active = moments(X, points[0]["standardize"])
    history = min(HISTORY_MAX, max(HISTORY_MIN, PAIR_VALUES // (2 * num_classes * (X.shape[1] + 1))))
    precondition, pairs = Preconditioner(X, mean, scale, active), deque(maxlen=history)
    theta = torch.zeros(num_classes, X.shape[1] + 1, dtype=torch.float64, device=device)  # [W | b]
    dtype = torch.float64 if precise else torch.float32  # the heads', filled in as each fit ends (peak memory)
    weight = torch.empty(len(points), num_classes, X.shape[1], dtype=dtype, device=device)
    bias = torch.empty(len(points), num_classes, dtype=dtype, device=device)
    fits, path = [None] * len(points), []  # path: the last two (penalty, estimate of the optimum), strongest first
    order = range(len(points)) if init is not None else sorted(range(len(points)), key=lambda i: -points[i]["penalty"])
    state = {"precise": precise}  # carried from fit to fit: see fit_one
    ended = EarlyEnd(patience) if patience else None
    for i in progress.track(order, desc=f"linear probe, {len(points)} penalties", unit="penalty"):
        lam = points[i]["penalty"]
        if ended is not None and ended.done:
            weight[i], bias[i] = 0, 0
            fits[i] = {"iterations": 0, "evaluations": 0, "converged": False, "stop": NOT_FITTED}
            continue
        if init is not None:  # W0 x + b0 = (W0 * scale) (x - mean) / scale + (b0 + W0 mean)
            W0, b0 = init.weight[i].to(device, torch.float64), init.bias[i].to(device, torch.float64)
            theta[:, :-1], theta[:, -1] = W0 * scale, b0 + W0 @ mean
            # a constant column's weight goes into the bias (its standardised value is (x - mean) / scale)
            theta[:, -1] += theta[:, :-1][:, ~active] @ ((X[0].double() - mean) / scale)[~active]
            theta[:, :-1][:, ~active] = 0
            state["terms"] = None
        guess = None
        if init is None and len(path) >= 2:  # the first step goes there, from this fit's optimum
            guess = theta.clone()
            extrapolate(guess, path[-2:], lam)
        fits[i] = fit_one(X, y, lam, theta, max_iter=points[i]["max_iter"], tol=points[i]["tol"],
                          rtol=points[i]["rtol"], precondition=precondition, pairs=pairs, state=state, guess=guess,
                          frame=(mean, scale))
        W = theta[:, :-1] / scale  # W' x + b' = W (x - mean) / scale + b
        weight[i], bias[i] = W, theta[:, -1] - W @ mean
        path = [*path[-1:], (lam, state.pop("estimate"))]
        if ended is not None:
            ended.add(rate(weight[i], bias[i]))
    return Heads(weight, bias, fits=fits)


class EarlyEnd:
    """`early_end`'s rule over a sweep's val scores, in sweep order: `done` once `patience` scores in a row
    are strictly below the best before them (a tie with the best breaks the run, as it would win a tie)."""

    def __init__(self, patience: int):
        self.patience, self.best, self.behind, self.done = patience, -math.inf, 0, False

    def add(self, score: float) -> None:
        self.behind = self.behind + 1 if score < self.best else 0
        self.best = max(self.best, score)
        self.done = self.behind >= self.patience
