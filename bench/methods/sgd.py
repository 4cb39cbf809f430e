"""`sgd`: the SeA reference pipeline without augmentation, and the trainer the SGD family shares.

Reference pipeline (Qian, Xu, Hu, ECCV 2024, official code): L2-normalised features, a bias-free
linear head (torch.nn.Linear's default init, U(-1/sqrt(D), 1/sqrt(D))), loss lamda * CE(logits / lamda),
SGD with momentum and weight decay at a constant learning rate, mini-batches of a fresh permutation
every epoch (the last, smaller batch included).

Every head of the grid (and every seed) is trained at once: the weights are one tensor [G, C, D],
the per-head hyperparameters are [G, 1, 1] tensors, and a step is a few batched matrix products.
A head's seed alone fixes its initialisation and its permutations, so a head trained in a stack
gives the same result as the same head trained alone.

`center` (not in the reference code, whose default it is not) subtracts the mean of the fitted
examples before normalising: post-ReLU features can be so alike in direction (a random-init CNN's
have mean cosine 0.998 on digits) that normalised, uncentred they leave the head nothing to learn.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import contextmanager
from itertools import groupby

import torch
import torch.nn.functional as F

from bench import progress
from bench.methods import Heads

log = logging.getLogger(__name__)

SHARED = ("batch_size", "epochs", "center")  # heads of one stack must agree on these
PER_HEAD = ("lr", "momentum", "weight_decay", "lamda", "delta")


def init_weight(gen: torch.Generator, num_classes: int, dim: int, dtype) -> torch.Tensor:
    bound = dim ** -0.5
    return torch.empty(num_classes, dim, dtype=dtype).uniform_(-bound, bound, generator=gen)


def logit_grad(W, x, y1, hp) -> torch.Tensor:
    """d loss / d logits [G, B, C] of the batch-mean loss lamda * CE(z / lamda), z = x W^T with the
    margin delta subtracted from the true-class logit (the lamda factors cancel)."""
    return logit_grad_at(torch.einsum("gbd,gcd->gbc", x, W), y1, hp)


def logit_grad_at(xW, y1, hp) -> torch.Tensor:
    """`logit_grad` from the products xW = x W^T [G, B, C]."""
    z = xW - hp["delta"] * y1
    return (torch.softmax(z / hp["lamda"], dim=-1) - y1) / xW.shape[1]


def seed_major(slot: torch.Tensor, seeds: int) -> bool:
    """Whether the heads come seed by seed, as many per seed (`train` orders a grid's heads so)."""
    return is_seed_major(slot.tolist(), seeds)


def is_seed_major(slots: list[int], seeds: int) -> bool:
    G = len(slots)
    return G % seeds == 0 and slots == [s for s in range(seeds) for _ in range(G // seeds)]


def seed_runs(slot: torch.Tensor, seeds: int) -> list[slice] | None:
    """The heads as consecutive runs, each seed-major (as `train` orders a stack: by `within`, then by seed),
    or None when they are not. Read on the host, in one transfer: a few dozen integers."""
    slots = slot.tolist()
    breaks = [i for i in range(1, len(slots)) if slots[i] < slots[i - 1]]
    runs = [slice(a, b) for a, b in zip([0, *breaks], [*breaks, len(slots)])]
    return runs if all(is_seed_major(slots[run], seeds) for run in runs) else None


def logits_of(xs, W, slot) -> torch.Tensor:
    """x W^T [G, B, C] of head g on its seed's batch xs[slot[g]] (xs [S, B, D]): for each run of seed-major
    heads (`seed_runs`), one product per seed against all its heads' weights, [B, D] x [D, G/S * C], with no
    [G, B, D] copy of the batches (about twice as fast as per-head products at the benchmark's shape);
    per head when the heads are in no such order."""
    S, B, D = xs.shape
    G, C, _ = W.shape
    runs = seed_runs(slot, S)
    if runs is None:
        return torch.einsum("gbd,gcd->gbc", xs[slot], W)
    out = W.new_empty(G, B, C)
    for run in runs:
        g = run.stop - run.start
        part = torch.bmm(xs, W[run].reshape(S, -1, D).transpose(1, 2))  # [S, B, g/S * C]
        out[run].view(S, g // S, B, C).copy_(part.view(S, B, g // S, C).transpose(1, 2))
    return out


def grad_of(r, xs, slot) -> torch.Tensor:
    """sum_b r[g, b, c] xs[slot[g], b, d]: the weight gradient [G, C, D] of logit gradients r [G, B, C]."""
    S, B, D = xs.shape
    G, _, C = r.shape
    runs = seed_runs(slot, S)
    if runs is None:
        return torch.einsum("gbc,gbd->gcd", r, xs[slot])
    out = r.new_empty(G, C, D)
    for run in runs:
        g = run.stop - run.start
        R = r[run].reshape(S, g // S, B, C).transpose(2, 3).reshape(S, g // S * C, B)
        torch.bmm(R, xs, out=out[run].view(S, g // S * C, D))
    return out


def plus_batches(t, xs, slot) -> torch.Tensor:
    """t [G, B, D] + xs[slot], in place: with the heads seed-major, each seed's batch broadcast over its
    heads, without the [G, B, D] copy of the batches."""
    S = xs.shape[0]
    if not seed_major(slot, S):
        return t.add_(xs[slot])
    t.view(S, -1, *t.shape[1:]).add_(xs[:, None])
    return t


def scratch(hp: dict, shape: tuple[int, ...], like: torch.Tensor, name: str = "d") -> torch.Tensor:
    """An uninitialised tensor of `shape`, from the buffer `name` kept in `hp` for the rest of the stack: with
    glibc, a fresh CPU allocation above its mmap threshold (32 MB at most) is page-faulted in on every step,
    which costs more than the product that fills it (a [24, 256, 2048] float32 r W: 1.4-2.1 ms per head
    fresh, 0.4 ms into a kept buffer, on the 2-core dev machine). What a step makes in it is gone by the
    next call with the same name."""
    n, key = math.prod(shape), f"scratch_{name}"
    buf = hp.get(key)
    if buf is None or buf.numel() < n or buf.dtype != like.dtype:
        buf = hp[key] = torch.empty(n, dtype=like.dtype, device=like.device)
    return buf[:n].view(shape)


def batch_grad(W, xs, slot, y1, hp, augment=None) -> torch.Tensor:
    """d loss / d W [G, C, D] on the batch: head g sees seed slot[g]'s batch xs[slot[g]] (xs: [S, B, D]),
    after `augment` when there is one."""
    x = xs[slot]
    if augment:
        x = augment(W, x, y1, hp)
    return torch.einsum("gbc,gbd->gcd", logit_grad(W, x, y1, hp), x)


def train_stack(X, y, *, num_classes, points, batch_size, epochs, center, augment, augment_keys, weight_grad,
                setup=None, step_size=None):
    """Weights [G, C, D], the centre [D] the heads were trained around (zeros without `center`) and each
    head's smallest step size [G].

    `setup(X, y, num_classes=, points=, seeds=)`, when given, sees the normalised features the heads
    are trained on (once per stack) and returns entries added to `hp`, the dict every step receives;
    `hp["epoch"]` is the fraction of training done when the epoch began (0, 1/epochs, ...), and
    `hp["batch"]` the rows of X in each seed's batch [S, B] (a method may have computed on them in `setup`).
    `step_size(hp)`, when given, is each head's step size [G, 1, 1] for the epoch (else `hp["lr"]`)."""
    shift = X.mean(0) if center else torch.zeros_like(X[0])
    X = X - shift  # our one working copy, normalised in place: F.normalize(X - shift, dim=1), one X at a time
    X.div_(X.norm(2, 1, keepdim=True).clamp_min(1e-12))
    n, dim = X.shape
    hp = {k: torch.tensor([p[k] for p in points], dtype=X.dtype, device=X.device).view(-1, 1, 1)
          for k in PER_HEAD + augment_keys}
    # one CPU generator per seed draws that seed's initial weights, then its permutations
    seeds = sorted({p["seed"] for p in points})
    slot = torch.tensor([seeds.index(p["seed"]) for p in points], device=X.device)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    W = torch.stack([init_weight(g, num_classes, dim, X.dtype) for g in gens]).to(X.device)[slot]
    buf = torch.zeros_like(W)
    if setup:
        hp.update(setup(X, y, num_classes=num_classes, points=points, seeds=seeds))
    lr_min = hp["lr"].flatten().clone()
    for epoch in progress.track(range(epochs), desc=f"fitting {len(points)} head(s)", unit="epoch"):
        hp["epoch"] = epoch / epochs
        lr = step_size(hp) if step_size else hp["lr"]
        torch.minimum(lr_min, lr.flatten(), out=lr_min)
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(X.device)  # [S, N]
        for start in range(0, n, batch_size):
            idx = hp["batch"] = perms[:, start:start + batch_size]  # one batch per seed: heads of a seed share it
            xs, y1 = X[idx], F.one_hot(y[idx[slot]], num_classes).to(X.dtype)  # [S, B, D], [G, B, C]
            grad = weight_grad(W, xs, slot, y1, hp) if weight_grad else batch_grad(W, xs, slot, y1, hp, augment)
            buf.mul_(hp["momentum"]).add_(grad + hp["weight_decay"] * W)  # torch.optim.SGD, dampening 0
            W.sub_(lr * buf)
    return W, shift, lr_min


@contextmanager
def denormals_flushed():
    """Treat subnormal floats (below ~1e-38 in float32) as zero while training: a softmax at temperature
    0.01 produces them by the thousand, and x86 arithmetic on them is ~20x slower (measured: a SeA grid
    on digits pixels, 22.5 s -> 1.2 s). Their value is far below anything the result depends on."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def train(X, y, *, num_classes: int, points: list[dict], device, augment: Callable | None = None,
          augment_keys: tuple[str, ...] = (), weight_grad: Callable | None = None, setup: Callable | None = None,
          stack_keys: tuple[str, ...] = (), within: Callable | None = None,
          step_size: Callable | None = None) -> Heads:
    """Heads for `points`, in their order; one stack per distinct (batch_size, epochs, center, *stack_keys).

    A step's gradient is `batch_grad` (with `augment` applied to each head's batch), or `weight_grad`,
    a method's own computation of the same gradient with the same arguments. `stack_keys` are a method's
    hyperparameters that are not numbers (or that `setup` depends on): heads that differ in them are
    trained in different stacks; `setup` is `train_stack`'s. `within(point)`, when given, orders the heads
    inside a stack (e.g. so that heads a step treats alike are contiguous: slices, not copies); then come
    the seeds, so that each group's heads are seed-major (`logits_of`, `grad_of`).
    `step_size` is `train_stack`'s; with it, each head's `fits` entry has its smallest step size, `lr_min`."""
    X, y = X.to(device), y.to(device)
    W = torch.empty(len(points), num_classes, X.shape[1], dtype=X.dtype, device=device)
    b = torch.empty(len(points), num_classes, dtype=X.dtype, device=device)
    lr_min = torch.empty(len(points), dtype=X.dtype, device=device)
    keys = SHARED + stack_keys
    order = sorted(range(len(points)), key=lambda i: ([points[i][k] for k in keys], within(points[i]) if within else 0,
                                                      points[i]["seed"]))
    with denormals_flushed():
        for shared, group in groupby(order, key=lambda i: [points[i][k] for k in keys]):
            group = list(group)
            W[group], shift, lr_min[group] = train_stack(
                X, y, num_classes=num_classes, points=[points[i] for i in group], augment=augment,
                augment_keys=augment_keys, weight_grad=weight_grad, setup=setup, step_size=step_size,
                **dict(zip(SHARED, shared)))
            b[group] = -W[group] @ shift  # W normalize(x - m) has the argmax of W x - W m
    fits = ends(W)
    if step_size:
        for fit, lr in zip(fits, lr_min.tolist()):
            fit["lr_min"] = lr
    return Heads(W, b, fits=fits)


def head_index(mask: torch.Tensor):
    """An index of the heads where `mask` [G, 1, 1] holds: a slice (a view, not a copy) when they are
    contiguous, as `train`'s `within` can order them."""
    idx = mask.flatten().nonzero().squeeze(1)
    first, last = int(idx[0]), int(idx[-1])
    return slice(first, last + 1) if last - first + 1 == len(idx) else idx


def ends(W: torch.Tensor) -> list[dict]:
    """How each head's training ended: a head whose weights overflowed to inf/NaN (a step size too large for
    its loss's curvature) diverged; its predictions are meaningless, and the protocol flags it."""
    finite = torch.isfinite(W).flatten(1).all(1).tolist()
    if not all(finite):
        log.warning("%d of %d head(s) diverged (non-finite weights)", finite.count(False), len(finite))
    return [{"stop": "epochs" if ok else "diverged", "converged": ok} for ok in finite]


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    return train(X, y, num_classes=num_classes, points=points, device=device)
