"""`afan`: adversarial feature augmentation (A-FAN; Chen et al. 2021, official code VITA-Group/CV_A-FAN)
on the last layer, on the `sgd` trainer.

As its classification code (`attack_algo.PGD`): starting from the (detached) features x of the batch,
`steps` ascent steps x <- x + gamma * sign(d loss / d x) through the current head with the true labels,
an optional clip to the L-inf ball of radius eps around x (off by default, as there: eps 0 = off), then
one SGD step on 0.5 * (loss(clean) + loss(adversarial)). The loss is the trainer's lamda * CE(z / lamda).

Units (ours): the features are unit vectors in D dimensions, so gamma and eps are given per coordinate in
units of 1 / sqrt(D): one step moves a feature by an L2 length of gamma, whatever D.

`reinject` = n (off when 0) is the normalisation re-injection of A-FAN's detection / segmentation code
(Detection/py/train_sat_mix.py: `get_sample_points(x, x_adv, 5)`, `mix_feature` of each, loss 0.2 x the
sum of five): the n strengths t_k = k / n (k = 1..n) each give the example
sigma_k * (x - mu) / sigma + mu_k, where (mu, sigma) are the moments of the clean x and (mu_k, sigma_k)
those of the interpolant lerp(x, x_adv, t_k), and the loss is (loss(clean) + sum_k loss(example_k)) / (n + 1),
equal weights (n = 4: the official 0.2 each). The moments are the official `mix_feature`'s: mean and
sqrt(unbiased variance + 1e-5) over dim 1, the channel axis of a feature map [B, C, H, W] at each position;
on pooled vectors [B, D] the same call takes them per example over the D feature dimensions.
"""

from __future__ import annotations

import torch

from bench import UserError
from bench.methods import Heads
from bench.methods.sgd import grad_of, logit_grad_at, logits_of, plus_batches, scratch, train

KEYS = ("gamma", "eps")
STACK = ("steps", "reinject")  # heads that differ in them are trained in different stacks: none waits on another
VAR_EPS = 1e-5  # added to the variance, as the official mix_feature


def displacement(W, xW, y1, hp, steps: int, first: torch.Tensor | None = None, out: torch.Tensor | None = None):
    """(d, step): x_adv - x = step * d after `steps` sign-gradient ascent steps of the loss of each head (and
    the optional clip, a clamp of the displacement), from the clean logits xW = x W^T. d [G, B, D] is in units
    of each head's step [G, 1, 1] (a sum of signs: no pass over it to scale it); `first`: d loss / d logits
    at x when the caller has it (the clean pass's), which saves the first product; `out`: where d is made."""
    step = hp["gamma"] * W.shape[-1] ** -0.5
    clipped = hp["eps"] > 0
    bound = torch.where(clipped, hp["eps"] / hp["gamma"], torch.inf)  # the clip's radius in steps (inf: none)
    clip = bool(clipped.any())  # read once, not on every ascent step (a host sync on a GPU)
    d = None
    for k in range(steps):
        if k == 0:
            r = first if first is not None else logit_grad_at(xW, y1, hp)
        else:
            r = logit_grad_at(xW + step * torch.einsum("gbd,gcd->gbc", d, W), y1, hp)
        # d loss / d x up to a positive factor; a later step's in a second buffer (`sgd.scratch`)
        move = torch.bmm(r, W, out=out if d is None else scratch(hp, d.shape, d, "move")).sign_()
        d = move if d is None else d.add_(move)
        if clip:
            d.clamp_(-bound, bound)
    return d, step


def ascend(W, x, y1, hp, steps: int) -> torch.Tensor:
    """x after `steps` sign-gradient ascent steps (`displacement`): the adversarial features themselves."""
    d, step = displacement(W, torch.einsum("gbd,gcd->gbc", x, W), y1, hp, steps)
    return x + step * d


def moments(x, scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sqrt(unbiased variance + 1e-5) of each example over its feature dimensions, as the official
    `mix_feature` (two passes: torch.var's one-pass kernel is ~6x slower on CPU); `scratch`: x is a
    temporary, centred in place."""
    mu = x.mean(-1, keepdim=True)
    centred = x.sub_(mu) if scratch else x - mu
    ss = torch.linalg.vector_norm(centred, dim=-1, keepdim=True).square_()
    return mu, ss.div_(x.shape[-1] - 1).add_(VAR_EPS).sqrt_()


def affine(clean, mixed) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) [G, B, 1] with mix(x, x_adv, t) = a * x + b, from the `moments` of x and of lerp(x, x_adv, t):
    the re-injected example is an affine map of x."""
    (mu, sigma), (mu_t, sigma_t) = clean, mixed
    a = sigma_t / sigma
    return a, mu_t - a * mu


def strengths(n: int) -> list[float]:
    """The official get_sample_points(x, x_adv, n + 1) without its first (clean) point: t_k = k / n."""
    return [k / n for k in range(1, n + 1)]


def mix(x, x_adv, t) -> torch.Tensor:
    """sigma_t * (x - mu) / sigma + mu_t with the moments of x and of lerp(x, x_adv, t)."""
    a, b = affine(moments(x), moments(torch.lerp(x, x_adv, t)))
    return a * x + b


def weight_grad(W, xs, slot, y1, hp) -> torch.Tensor:
    """d/dW of the A-FAN loss, each term a batch mean, from the displacement x_adv - x = step * d alone: no
    head's copy of its batch is made (`plus_batches`). The clean pass's logit gradient is the first ascent
    step's. Without re-injection the loss is 0.5 * (loss(clean) + loss(x_adv)), and x_adv's logits
    x W^T + step d W^T give the gradient r_adv^T x + step r_adv^T d. With n strengths, each re-injected
    example a_k x + b_k (`affine`) has the logits a_k (x W^T) + b_k (W 1)^T and the gradient
    (a_k r_k)^T x + (r_k^T b_k) 1^T; the loss is their mean with the clean one's. Every x term joins the
    clean one: one product per seed (`grad_of`); the weights are applied to the logit gradients first."""
    xW = logits_of(xs, W, slot)
    r = logit_grad_at(xW, y1, hp)  # clean
    d, step = displacement(W, xW, y1, hp, hp["steps"], first=r, out=scratch(hp, (*xW.shape[:2], W.shape[-1]), W))
    n = hp["reinject"]
    if n == 0:
        r_adv = logit_grad_at(xW + step * torch.einsum("gbd,gcd->gbc", d, W), y1, hp)
        out = grad_of(r.add_(r_adv).mul_(0.5), xs, slot)
        return out.baddbmm_((r_adv * step).transpose(1, 2), d, alpha=0.5)
    clean = [v[slot] for v in moments(xs)]  # the clean x's, per head
    row_sums = W.sum(-1).unsqueeze(1)  # (W 1)^T [G, 1, C]
    term = torch.zeros_like(row_sums)
    for t in strengths(n):  # lerp(x, x_adv, t) = x + t step d
        a, b = affine(clean, moments(plus_batches(d * (t * step), xs, slot), scratch=True))
        r_k = logit_grad_at(a * xW + b * row_sums, y1, hp)
        r += a * r_k
        term += (b * r_k).sum(1, keepdim=True)
    out = grad_of(r.mul_(1 / (n + 1)), xs, slot)
    return out.add_(term.transpose(1, 2).mul_(1 / (n + 1)))


def setup(X, y, *, num_classes, points, seeds) -> dict:
    return {"steps": points[0]["steps"], "reinject": points[0]["reinject"]}


def check(points: list[dict]) -> None:
    for p in points:
        if not isinstance(p["reinject"], int) or isinstance(p["reinject"], bool) or p["reinject"] < 0:
            raise UserError(f"method.params.reinject must be a whole number of strengths (0 = off), "
                            f"not {p['reinject']!r}")


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    check(points)
    return train(X, y, num_classes=num_classes, points=points, device=device, augment_keys=KEYS,
                 weight_grad=weight_grad, setup=setup, stack_keys=STACK)
