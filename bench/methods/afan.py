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
from bench.methods.sgd import grad_of, head_index, logit_grad_at, logits_of, plus_batches, scratch, train

KEYS = ("gamma", "eps", "mix")
STACK = ("steps",)  # heads with different step counts are trained in different stacks: none waits on another
FLOOR = 1e-12  # on a standard deviation


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
    """d/dW of 0.5 * (loss(clean) + loss(adversarial)), each a batch mean, from the displacement x_adv - x =
    step * d alone: no head's copy of its batch is made (`plus_batches`). The clean pass's logit gradient is
    the first ascent step's. A plain head's x_adv has the logits x W^T + step d W^T and the gradient
    r_adv^T x + step r_adv^T d; a mixed head's example a x + b (`affine`) has the logits a (x W^T) + b (W 1)^T
    and the gradient (a r_adv)^T x + (r_adv^T b) 1^T. Every x term joins the clean one: one product per seed
    (`grad_of`); the factor 0.5 is applied to the logit gradients, before the products."""
    xW = logits_of(xs, W, slot)
    r = logit_grad_at(xW, y1, hp)  # clean
    d, step = displacement(W, xW, y1, hp, hp["steps"], first=r, out=scratch(hp, (*xW.shape[:2], W.shape[-1]), W))
    extra = []  # (heads, a function adding their terms beyond the x terms to their part of the gradient)
    for mixed in (True, False):
        on = (hp["mix"] > 0) if mixed else (hp["mix"] <= 0)
        if not on.any():
            continue
        h = head_index(on)
        sub = {"lamda": hp["lamda"][h], "delta": hp["delta"][h]}
        if mixed:  # d serves these heads only here: lerp(x, x_adv, t) = x + t step d is made in its place
            clean = [v[slot[h]] for v in moments(xs)]  # the clean x's, per seed
            t = hp["mix"][h] * step[h]
            a, b = affine(clean, moments(plus_batches(d[h].mul_(t), xs, slot[h]), scratch=True))
            r_adv = logit_grad_at(a * xW[h] + b * W[h].sum(-1).unsqueeze(1), y1[h], sub)
            r[h] += a * r_adv
            term = (b * r_adv).sum(1).unsqueeze(-1).mul_(0.5)
            extra.append((h, lambda part, term=term: part.add_(term)))
        else:
            r_adv = logit_grad_at(xW[h] + step[h] * torch.einsum("gbd,gcd->gbc", d[h], W[h]), y1[h], sub)
            r[h] += r_adv
            rd = (r_adv * step[h]).transpose(1, 2)
            extra.append((h, lambda part, rd=rd, dh=d[h]: part.baddbmm_(rd, dh, alpha=0.5)))
    out = grad_of(r.mul_(0.5), xs, slot)
    for h, add in extra:
        part = add(out[h])
        if not isinstance(h, slice):  # an index: out[h] was a copy
            out[h] = part
    return out


def setup(X, y, *, num_classes, points, seeds) -> dict:
    return {"steps": points[0]["steps"]}


def fit(X, y, *, num_classes: int, points: list[dict], device) -> Heads:
    return train(X, y, num_classes=num_classes, points=points, device=device, augment_keys=KEYS,
                 weight_grad=weight_grad, setup=setup, stack_keys=STACK, within=lambda p: p["mix"] > 0)
