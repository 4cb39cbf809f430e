"""`flow`: semantic perturbations with a normalizing flow (Yuksel et al., ICCV 2021; official code
okyksl/flow-lp, which trains Glow on pixels), moved to feature space (our adaptation), on the `sgd` trainer.

A flow is fitted once on the features the heads are trained on (the fitted examples, normalised as the
heads see them) after PCA to `pca_dim` dimensions (bench.flows: fitted once, cached on disk). Each step
replaces every example of the batch by its perturbed version (the official `ratio` 1.0):
  p = PCA coordinates of x, z = flow(p);
  `rand`: z' = z + n, n ~ N(0, r^2) per latent coordinate, then clipped to the ball of radius r of `norm`
    (the official FlowRandPert with its `ord`: n / max(||n|| / r, 1) in L2, a clamp in L-inf);
  `adv`: latent PGD against the current head with the head's own predictions as labels (the official
    FlowAdvPert, "avoid label leaking"), on the plain cross-entropy of the head's logits (its `loss_fn`,
    nn.CrossEntropyLoss; not the trainer's temperature loss): a random start uniform in [-r, r]^k projected
    on the ball, `steps` steps of length alpha * r along sign(grad) (`norm` linf) or grad / ||grad||
    (`norm` l2), each projected on the ball;
  p' = flow^-1(z'), x' = x + V (p' - p): decoded, with the PCA residual of x added back; the head is
  trained on x' with the true labels.
The defaults are the official README's CIFAR commands: `adv` L2, eps 1.0, alpha 0.5 eps, 3 steps (and `rand`
L2, eps 20, in the grid). Those radii were chosen for the official Glow's latent of d0 = 3 x 32 x 32 = 3072
coordinates; ours has k = pca_dim. A standard normal latent's length is about sqrt(d) (E||z||^2 = d), so an
L2 radius eps moves z by the fraction eps / sqrt(d0) of its length there; the same fraction here is
r = eps * sqrt(k / d0) (`radius`). In L-inf a coordinate's scale does not depend on d: r = eps.
With `flow_transforms` 0 (`method=flow_linear`) the flow is the PCA whitening alone: the same perturbations
through the linear part only, the ablation that shows what the coupling layers add.
Everything after the flow lives in the k = pca_dim principal coordinates: the head's logits of x' are
x W^T + (p' - p) (W V)^T and its weight gradient r^T x + (r^T (p' - p)) V^T, so a step costs about one
`sgd` step plus the flow's k-dimensional passes, never a second [G, B, D] product. The features are
frozen, so p and z of every fitted example are computed once per stack: a step only decodes.
"""

from __future__ import annotations

import torch

from bench import UserError, flows
from bench.methods import Heads
from bench.methods.noise import draw
from bench.methods.sgd import grad_of, head_index, logit_grad_at, logits_of, train

KEYS = ("eps", "alpha")
STACK = ("norm", "steps")  # `rand` and `adv` heads share a stack: one encode and one decode per step
MODES, NORMS = ("rand", "adv"), ("l2", "linf")
FIT = ("pca_dim", "flow_transforms", "flow_hidden", "flow_epochs", "flow_batch_size", "flow_lr", "flow_seed")
STREAM = 104729  # offset of the perturbation generators' seeds from the heads' own
LATENT_DIM = 3 * 32 * 32  # d0: the official CIFAR Glow's latent size, for which its eps values were chosen


def radius(eps, norm: str, k: int):
    """The latent radius r of `eps` (given in the official CIFAR latent's units) in a k-dimensional latent."""
    return eps * (k / LATENT_DIM) ** 0.5 if norm == "l2" else eps


def project(delta, eps, norm: str) -> torch.Tensor:
    """delta [G, B, k] onto the ball of radius eps [G, 1, 1] (per example) of `norm`."""
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    length = delta.norm(dim=-1, keepdim=True)
    return delta / torch.maximum(length / eps.clamp_min(1e-30), torch.ones_like(length))


def latent_pgd(codec, W, xW, p, z, start, hp) -> torch.Tensor:
    """The adversarial latent offset delta [G, B, k] of each head (module docstring); hp["eps"] is the radius r."""
    eps, norm = hp["eps"], hp["norm"]
    pred = torch.nn.functional.one_hot(xW.argmax(-1), W.shape[1]).to(xW.dtype)  # the head's own labels
    WV = W @ codec.basis  # [G, C, k]
    delta = project(eps * start, eps, norm)
    for _ in range(hp["steps"]):
        delta.requires_grad_(True)
        with torch.enable_grad():
            p_new = codec.decode(z + delta)
            # d CE / d logits of each example, up to the batch mean's 1/B (the step is normalised per example)
            r = torch.softmax(xW + (p_new.detach() - p) @ WV.transpose(1, 2), -1) - pred
            (grad,) = torch.autograd.grad(p_new, delta, grad_outputs=r @ WV)  # through the flow only
        with torch.no_grad():
            step = grad.sign() if norm == "linf" else grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            delta = project(delta + hp["alpha"] * eps * step, eps, norm)
    return delta.detach()


def offsets(codec, W, xW, p, z, noise, hp) -> torch.Tensor:
    """The latent perturbation [G, B, k] of each head from a standard normal draw `noise` [G, B, k], with
    r = radius(hp["eps"]): r * noise clipped to the r-ball for a `rand` head; for an `adv` head (hp["adv"]
    [G, 1, 1]), the PGD from a random start uniform in [-1, 1]^k (the normal draw through its CDF), scaled."""
    r = radius(hp["eps"], hp["norm"], z.shape[-1])
    out = project(r * noise, r, hp["norm"])
    if hp["adv"].any():
        h = head_index(hp["adv"])  # fit orders the heads: the adv ones are contiguous
        sub = {"eps": r[h], "alpha": hp["alpha"][h], "norm": hp["norm"], "steps": hp["steps"]}
        out[h] = latent_pgd(codec, W[h], xW[h], p[h], z[h], 2 * torch.special.ndtr(noise[h]) - 1, sub)
    return out


def weight_grad(W, xs, slot, y1, hp) -> torch.Tensor:
    codec = hp["codec"]
    ps, zs = hp["P"][hp["batch"]], hp["Z"][hp["batch"]]  # [S, B, k]
    p, z = ps[slot], zs[slot]
    xW = logits_of(xs, W, slot)
    noise = draw(hp["gens"], zs.shape[1:], zs)[slot]  # one draw per seed, shared by its heads
    shift = codec.decode(z + offsets(codec, W, xW, p, z, noise, hp)) - p  # [G, B, k]: x' = x + V shift
    r = logit_grad_at(xW + shift @ (W @ codec.basis).transpose(1, 2), y1, hp)
    return grad_of(r, xs, slot) + (r.transpose(1, 2) @ shift) @ codec.basis.T


def make_setup(cache_dir, costs: dict | None):
    def setup(X, y, *, num_classes, points, seeds) -> dict:
        first = points[0]
        codec, note = flows.fit(X, **dict(zip(("dim", "transforms", "hidden", "epochs", "batch_size", "lr", "seed"),
                                              (first[k] for k in FIT))), cache_dir=cache_dir)
        if costs is not None:
            costs.setdefault("flow_fits", []).append(note)
            timings = costs.setdefault("timings", {})
            timings["flow_fit"] = round(timings.get("flow_fit", 0.0) + note["seconds"], 3)
        adv = torch.tensor([q["mode"] == "adv" for q in points], device=X.device).view(-1, 1, 1)
        P = codec.coords(X)  # the features are frozen: each example's coordinates and latent, once
        Z = torch.cat([codec.encode(part) for part in P.split(8192)])
        return {"codec": codec, "adv": adv, "P": P, "Z": Z, "norm": first["norm"], "steps": first["steps"],
                "gens": [torch.Generator(device=X.device).manual_seed(s + STREAM) for s in seeds]}
    return setup


def check(points: list[dict]) -> None:
    for p in points:
        if p["mode"] not in MODES or p["norm"] not in NORMS:
            raise UserError(f"method.params.mode must be one of {', '.join(MODES)} and norm one of "
                            f"{', '.join(NORMS)}, not {p['mode']!r} and {p['norm']!r}")
        if [p[k] for k in FIT] != [points[0][k] for k in FIT]:
            raise UserError(f"the points of one fit must share the flow's settings ({', '.join(FIT)}): one flow "
                            "serves the whole grid")


def fit(X, y, *, num_classes: int, points: list[dict], device, cache_dir=None, costs: dict | None = None) -> Heads:
    """`cache_dir`: where fitted flows are kept (None: not kept); `costs`: receives each flow fit's note
    and its seconds (under costs["timings"]["flow_fit"])."""
    check(points)
    return train(X, y, num_classes=num_classes, points=points, device=device, augment_keys=KEYS,
                 weight_grad=weight_grad, setup=make_setup(cache_dir, costs), stack_keys=STACK,
                 within=lambda p: p["mode"] == "adv")
