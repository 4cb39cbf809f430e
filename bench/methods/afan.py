"""`afan`: adversarial feature augmentation (A-FAN; Chen et al. 2021, official code VITA-Group/CV_A-FAN)
on the last layer, on the `sgd` trainer.

As its classification code (`attack_algo.PGD`): starting from the (detached) features x of the batch,
`steps` ascent steps x <- x + gamma * sign(d loss / d x) through the current head with the true labels,
an optional clip to the L-inf ball of radius eps around x (off by default, as there: eps 0 = off), then
one SGD step on 0.5 * (loss(clean) + loss(adversarial)). The loss is the trainer's lamda * CE(z / lamda).

Units (ours): the features are unit vectors in D dimensions, so gamma and eps are given per coordinate in
units of 1 / sqrt(D): one step moves a feature by an L2 length of gamma, whatever D.

`mix` (off when 0) is the normalisation re-injection of A-FAN's detection / segmentation code: with
t = mix, the adversarial example becomes sigma_t * (x - mu) / sigma + mu_t, where (mu, sigma) are the
moments of the clean x and (mu_t, sigma_t) those of the interpolant lerp(x, x_adv, t). The official code
takes them per channel over a feature map; on pooled vectors there is no spatial axis, so here they are
per example over the feature dimensions (our adaptation).
"""

from __future__ import annotations

import torch

from bench.methods import Heads
from bench.methods.sgd import grad_of, head_index, logit_grad_at, logits_of, plus_batches, train

KEYS = ("gamma", "eps", "mix")
STACK = ("steps",)  # heads with different step counts are trained in different stacks: none waits on another
FLOOR = 1e-12  # on a standard deviation


def displacement(W, xW, y1, hp, steps: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """x_adv - x [G, B, D] after `steps` sign-gradient ascent steps of the loss of each head (and the optional
    clip, a clamp of the displacement), from the clean logits xW = x W^T; `first`: d loss / d logits at x
    when the caller has it (the clean pass's), which saves the first product."""
    unit = W.shape[-1] ** -0.5
    step, radius, clip = hp["gamma"] * unit, hp["eps"] * unit, hp["eps"] > 0
    d = None
    for k in range(steps):
        if k == 0:
            r = first if first is not None else logit_grad_at(xW, y1, hp)
        else:
            r = logit_grad_at(xW + torch.einsum("gbd,gcd->gbc", d, W), y1, hp)
        move = torch.einsum("gbc,gcd->gbd", r, W).sign_().mul_(step)  # d loss / d x, up to a positive factor
        d = move if d is None else d.add_(move)
        if clip.any():
            d = torch.where(clip, torch.minimum(torch.maximum(d, -radius), radius), d)
    return d


def ascend(W, x, y1, hp, steps: int) -> torch.Tensor:
    """x after `steps` sign-gradient ascent steps (`displacement`): the adversarial features themselves."""
    return x + displacement(W, torch.einsum("gbd,gcd->gbc", x, W), y1, hp, steps)


def moments(x, scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each example over its feature dimensions (two passes: torch.std's
    one-pass kernel is ~6x slower on CPU); `scratch`: x is a temporary, centred in place."""
    mu = x.mean(-1, keepdim=True)
    centred = x.sub_(mu) if scratch else x - mu
    return mu, (torch.linalg.vector_norm(centred, dim=-1, keepdim=True) * x.shape[-1] ** -0.5).clamp_min(FLOOR)


def affine(clean, mixed) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) [G, B, 1] with mix(x, x_adv, t) = a * x + b, from the `moments` of x and of lerp(x, x_adv, t):
    the re-injected example is an affine map of x."""
    (mu, sigma), (mu_t, sigma_t) = clean, mixed
    a = sigma_t / sigma
    return a, mu_t - a * mu


def mix(x, x_adv, t) -> torch.Tensor:
    """sigma_t * (x - mu) / sigma + mu_t with the moments of x and of lerp(x, x_adv, t)."""
    a, b = affine(moments(x), moments(torch.lerp(x, x_adv, t)))
    return a * x + b


def weight_grad(W, xs, slot, y1, hp) -> torch.Tensor:
    """d/dW of 0.5 * (loss(clean) + loss(adversarial)), each a batch mean, from the displacement d = x_adv - x
    alone: no head's copy of its batch is made (`plus_batches`). The clean pass's logit gradient is the first
    ascent step's. A plain head's x_adv has the logits x W^T + d W^T and the gradient r_adv^T x + r_adv^T d;
    a mixed head's example a x + b (`affine`) has the logits a (x W^T) + b (W 1)^T and the gradient
    (a r_adv)^T x + (r_adv^T b) 1^T. Every x term joins the clean one: one product per seed (`grad_of`)."""
    xW = logits_of(xs, W, slot)
    r = logit_grad_at(xW, y1, hp)  # clean
    d = displacement(W, xW, y1, hp, hp["steps"], first=r)
    extra = []  # (heads, their terms beyond the x terms)
    for mixed in (True, False):
        on = (hp["mix"] > 0) if mixed else (hp["mix"] <= 0)
        if not on.any():
            continue
        h = head_index(on)
        sub = {"lamda": hp["lamda"][h], "delta": hp["delta"][h]}
        if mixed:  # d serves these heads only here: lerp(x, x_adv, t) = x + t d is made in its place
            clean = [v[slot[h]] for v in moments(xs)]  # the clean x's, per seed
            a, b = affine(clean, moments(plus_batches(d[h].mul_(hp["mix"][h]), xs, slot[h]), scratch=True))
            r_adv = logit_grad_at(a * xW[h] + b * W[h].sum(-1).unsqueeze(1), y1[h], sub)
            r[h] += a * r_adv
            extra.append((h, (b * r_adv).sum(1).unsqueeze(-1)))
        else:
            r_adv = logit_grad_at(xW[h] + torch.einsum("gbd,gcd->gbc", d[h], W[h]), y1[h], sub)
            r[h] += r_adv
            extra.append((h, torch.einsum("gbc,gbd->gcd", r_adv, d[h])))
    out = grad_of(r, xs, slot)
    for h, term in extra:
        out[h] += term
    return out.mul_(0.5)


def setup(X, y, *, num_classes, points, seeds) -> dict:
    return {"steps": points[0]["steps"]}


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    return train(X, y, num_classes=num_classes, points=points, device=device, augment_keys=KEYS,
                 weight_grad=weight_grad, setup=setup, stack_keys=STACK, within=lambda p: p["mix"] > 0)
