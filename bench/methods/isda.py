"""`isda`: implicit semantic data augmentation (Wang et al., NeurIPS 2019; official code
blackfeather-wang/ISDA-for-Deep-Networks) on frozen features, on the `sgd` trainer.

ISDA trains on the upper bound of the expected loss when each feature x of class y is sampled from
N(x, lambda Sigma_y): the cross-entropy of the augmented logits z_j + (lambda/2) (w_j - w_y)^T Sigma_y (w_j - w_y),
with lambda = lambda0 * epoch / epochs (epoch counted from 0), as the official `ratio`.

The temperature. The SGD family's loss is lamda * CE(z / lamda) of a bias-free head z = W x: the cross-
entropy sees the logits z / lamda, made by the weights W / lamda. The quadratic term is taken on the
logits the cross-entropy sees, with those weights, so the loss is

    lamda * CE(z / lamda + (lambda / (2 lamda^2)) q),    q_j = (w_j - w_y)^T Sigma_y (w_j - w_y),

which is exactly the ISDA bound on the expected trained loss E[lamda * CE(W x~ / lamda)], x~ ~ N(x, lambda Sigma_y)
(tested against a Monte-Carlo estimate): lambda keeps the paper's meaning, the variance scale of the
sampled features, whatever the temperature. In the pre-temperature logits the term is (lambda / (2 lamda)) q.

Features are frozen, so each class's mean and covariance are computed once, exactly, from the examples
being fitted (the normalised features the head sees; biased, dividing by n_c, as the official estimator),
never from val or test. `cov`: `full` (the paper's main form and the official CIFAR code: Sigma_c as the
class's centred examples, factored: Sigma_c = F_c^T F_c with F_c [min(n_c, D), D]), `diag` (the official
ImageNet code) or `lowrank` (ours, probabilistic PCA: the top-`rank` principal directions plus the mean of
the other eigenvalues on the identity, which keeps Sigma_c's trace). `auto` (the default) is `full` wherever
its factor fits the memory rule (at most 2^28 numbers, `fits`), else `lowrank`, else `diag`; each head's
entry in the record's fits says which it used (`cov`). No C x D x D tensor is ever made; q of all class pairs is formed per step from [C, D]
and [C, r, D] factors (the term depends on the weights only, not on the batch).

The step size (ours; the official code trains a deep network at its usual schedule). The quadratic term
adds curvature of up to L = 2 lambda max_c ||Sigma_c||_2 / lamda to the loss in W (through q_j, whose
Hessian in (w_j, w_y) has norm 4 ||Sigma_y||, at the temperature above). Heavy-ball SGD on a curvature L
is stable only for lr < 2 (1 + momentum) / L, and a class's largest eigenvalue (kept whole by `full` and
`lowrank`, spread over the dimensions by `diag`) made the larger lambda0 diverge at lr 1.6. So each epoch
each head steps with min(lr, (1 + momentum) / L_t), half that bound, at its own lambda_t; the record's
`fits` give each head's smallest step, `lr_min`. Heads whose cap never binds train exactly as before.
"""

from __future__ import annotations

import torch

from bench import UserError
from bench.methods import Heads
from bench.methods.sgd import grad_of, logit_grad_at, logits_of, train

KEYS = ("lambda0",)
STACK = ("cov", "rank")  # the class statistics depend on them: one stack per value
COVS = ("auto", "full", "lowrank", "diag")
LIMIT = 2 ** 28  # the most numbers a covariance factor may hold (1 GiB in float32): the memory rule
BUDGET = 2 ** 24  # elements of the [heads, C, r, C] products made at once (64 MiB in float32)


def class_stats(X, y, *, num_classes: int, cov: str, rank: int) -> dict:
    """{"S": [C, D] or None, "F": [C, r, D] or None}: Sigma_c = diag(S_c) + F_c^T F_c for each class c."""
    C, D = num_classes, X.shape[1]
    counts = torch.bincount(y, minlength=C).clamp_min(1).to(X.dtype)[:, None]
    mean = torch.zeros(C, D, dtype=X.dtype, device=X.device).index_add_(0, y, X) / counts
    if cov == "diag":
        centred = (X - mean[y]).pow_(2)
        return {"S": torch.zeros_like(mean).index_add_(0, y, centred) / counts, "F": None}
    keep = max_rank(y, num_classes=C, dim=D, cov=cov, rank=rank)
    F = torch.zeros(C, keep, D, dtype=X.dtype, device=X.device)
    S = torch.zeros(C, D, dtype=X.dtype, device=X.device) if cov == "lowrank" else None
    for c in range(C):
        rows = X[y == c]
        if len(rows) < 2:  # no spread to estimate
            continue
        # centred rows / sqrt(n_c) = U s V^T, so Sigma_c = V s^2 V^T: F_c = rows of s V^T
        _, s, Vt = torch.linalg.svd((rows - mean[c]) / len(rows) ** 0.5, full_matrices=False)
        ev = s ** 2
        if cov == "full":
            F[c, :len(s)] = s[:, None] * Vt
            continue
        k = min(keep, len(s))
        rest = ev[k:].sum() / (D - k) if D > k else ev.new_zeros(())  # mean of the D - k other eigenvalues
        F[c, :k] = (ev[:k] - rest).clamp_min(0).sqrt()[:, None] * Vt[:k]
        S[c] = rest
    return {"S": S, "F": F}


def max_rank(y, *, num_classes: int, dim: int, cov: str, rank: int) -> int:
    """Rows of the covariance factors: `rank` (lowrank), or the most a class's examples span (full)."""
    if cov == "lowrank":
        return min(rank, dim)
    return min(int(torch.bincount(y, minlength=num_classes).max()), dim)


def shared(A, W) -> torch.Tensor:
    """A W_g^T [G, R, C] for a matrix A [R, D] that every head shares: one product [R, D] x [D, G C], not G."""
    G, C, D = W.shape
    return (A @ W.reshape(G * C, D).T).view(-1, G, C).transpose(0, 1)


def quadratic(W, S, F, rows=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q [G, R, C], q[g, c, j] = (w_j - w_c)^T Sigma_c (w_j - w_c) for the heads W [G, C, D] and the classes
    c of `rows` (all when None), whose statistics S [R, D] and F [R, r, D] are; also the factor's differences
    E[g, c, r, j] = F_cr . (w_j - w_c) (None without a factor)."""
    G, C, D = W.shape
    rows = torch.arange(C, device=W.device) if rows is None else rows
    Wr = W[:, rows]  # w_c
    q = W.new_zeros(G, len(rows), C)
    if S is not None:  # sum_d S_cd (w_jd - w_cd)^2, expanded
        SW = S * Wr
        q += shared(S, W * W).baddbmm_(SW, W.transpose(1, 2), alpha=-2) + torch.linalg.vecdot(SW, Wr).unsqueeze(-1)
    E = None
    if F is not None:
        r = F.shape[1]
        P = shared(F.reshape(-1, D), W).view(G, len(rows), r, C)  # F_cr . w_j
        E = P - P.gather(3, rows.view(1, -1, 1, 1).expand(G, -1, r, 1))  # minus F_cr . w_c
        q = q + E.pow(2).sum(2)
    return q, E


def quadratic_grad(W, S, F, E, M, rows=None) -> torch.Tensor:
    """d/dW of sum_cj M[g, c, j] q[g, c, j], for q and E from `quadratic` (same `rows`)."""
    G, C, D = W.shape
    rows = torch.arange(C, device=W.device) if rows is None else rows
    out = torch.zeros_like(W)
    if S is not None:
        Wr, Mt = W[:, rows], M.transpose(1, 2)
        out.addcmul_(W, Mt @ S, value=2).baddbmm_(Mt, S * Wr, alpha=-2)  # as w_j
        as_c = (M @ W).sub_(M.sum(-1, keepdim=True) * Wr).mul_(S)  # in place: one [G, R, D] buffer
        out.index_add_(1, rows, as_c, alpha=-2)  # as w_c
    if F is not None:
        r = F.shape[1]
        H = 2 * M[:, :, None, :] * E  # d/dP[g, c, r, j] through w_j ...
        H.scatter_add_(3, rows.view(1, -1, 1, 1).expand(G, -1, r, 1), -H.sum(-1, keepdim=True))  # ... and w_c
        out += (H.reshape(G, -1, C).transpose(1, 2).reshape(G * C, -1) @ F.reshape(-1, D)).view(G, C, D)
    return out


def augmented(xW, q, y1, lam, lamda) -> torch.Tensor:
    """ISDA's pre-temperature logits [G, B, C]: z_ij + (lambda / (2 lamda)) q[y_i, j] (module docstring);
    y1 [G, B, R] is one-hot over the R classes of q's rows."""
    return xW + lam / (2 * lamda) * (y1 @ q)


def weight_grad(W, xs, slot, y1, hp) -> torch.Tensor:
    """d loss / d W of the ISDA loss of each head's batch: the data terms of all heads in one product per
    seed (`logits_of`, `grad_of`), the quadratic terms in chunks of heads (see BUDGET)."""
    G, C, _ = W.shape
    rows = (y1.sum((0, 1)) > 0).nonzero().squeeze(1)  # only the classes of the batches' examples have a q row
    S, F = (None if v is None else v[rows] for v in (hp["stats"]["S"], hp["stats"]["F"]))
    y1r, xW = y1[..., rows], logits_of(xs, W, slot)
    r, out = torch.empty_like(xW), torch.empty_like(W)
    step = max(1, BUDGET // (len(rows) * C * (F.shape[1] if F is not None else 1)))
    for start in range(0, G, step):
        h = slice(start, start + step)
        q, E = quadratic(W[h], S, F, rows)
        lam, lamda = hp["lambda0"][h] * hp["epoch"], hp["lamda"][h]  # [g, 1, 1]
        z = augmented(xW[h], q, y1r[h], lam, lamda)
        r[h] = logit_grad_at(z, y1[h], {"delta": hp["delta"][h], "lamda": lamda})  # d loss / d z
        M = lam / (2 * lamda) * (y1r[h].transpose(1, 2) @ r[h])  # d loss / d q[c, j]: class c's rows of r, summed
        out[h] = quadratic_grad(W[h], S, F, E, M, rows)
    return out + grad_of(r, xs, slot)


def spectral_norm(stats: dict) -> torch.Tensor:
    """max_c ||Sigma_c||_2 for Sigma_c = diag(S_c) + F_c^T F_c: max_d S_cd + ||F_c||_2^2, exact for the three
    `cov` forms (lowrank's S_c is one value on every coordinate, and diag or full have one part only)."""
    S, F = stats["S"], stats["F"]
    norm = 0
    if S is not None:
        norm = norm + S.amax(1)
    if F is not None:
        norm = norm + torch.linalg.matrix_norm(F, ord=2) ** 2
    return torch.as_tensor(norm).max()


def step_size(hp: dict) -> torch.Tensor:
    """Each head's step size [G, 1, 1] this epoch: lr, capped by the quadratic term's curvature (module docstring)."""
    curvature = 2 * hp["lambda0"] * hp["epoch"] * hp["sigma_max"] / hp["lamda"]
    return torch.minimum(hp["lr"], (1 + hp["momentum"]) / curvature)  # x / 0 = inf: no cap


def setup(X, y, *, num_classes, points, seeds) -> dict:
    stats = class_stats(X, y, num_classes=num_classes, cov=points[0]["cov"], rank=points[0]["rank"])
    return {"stats": stats, "sigma_max": spectral_norm(stats)}


def factor_size(y, *, num_classes: int, dim: int, cov: str, rank: int) -> int:
    """Numbers in the covariance statistics of `cov` on these labels: C x rows x D (C x D for diag)."""
    rows = 1 if cov == "diag" else max_rank(y, num_classes=num_classes, dim=dim, cov=cov, rank=rank)
    return num_classes * rows * dim


def resolve(y, *, num_classes: int, dim: int, cov: str, rank: int) -> str:
    """The covariance form a point uses: `auto` is the first of full, lowrank, diag whose statistics fit LIMIT."""
    if cov != "auto":
        return cov
    return next(c for c in ("full", "lowrank", "diag")
                if c == "diag" or factor_size(y, num_classes=num_classes, dim=dim, cov=c, rank=rank) <= LIMIT)


def check(y, *, num_classes: int, dim: int, points: list[dict]) -> None:
    """Bad `cov` or an asked-for covariance factor too large to hold, in one sentence, before any training."""
    for cov in {p["cov"] for p in points}:
        if cov not in COVS:
            raise UserError(f"unknown method.params.cov {cov!r}; known: {', '.join(COVS)}")
        rank = max(p["rank"] for p in points if p["cov"] == cov)
        size = factor_size(y, num_classes=num_classes, dim=dim, cov=cov, rank=rank)
        if cov in ("full", "lowrank") and size > LIMIT:
            raise UserError(f"cov={cov} needs a {size * 4 / 2 ** 30:.1f} GiB covariance factor on these features "
                            f"({num_classes} classes, {dim} dimensions); use cov=auto, lowrank with a smaller "
                            "rank, or diag")


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    check(y, num_classes=num_classes, dim=X.shape[1], points=points)
    used = [resolve(y, num_classes=num_classes, dim=X.shape[1], cov=p["cov"], rank=p["rank"]) for p in points]
    heads = train(X, y, num_classes=num_classes, points=[p | {"cov": c} for p, c in zip(points, used)],
                  device=device, augment_keys=KEYS, weight_grad=weight_grad, setup=setup, stack_keys=STACK,
                  step_size=step_size)
    for entry, cov in zip(heads.fits, used):
        entry["cov"] = cov  # what `auto` became, in the record
    return heads
