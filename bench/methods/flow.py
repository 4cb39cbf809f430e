"""`flow`: semantic perturbations with a normalizing flow (Yuksel et al., ICCV 2021; official code
okyksl/flow-lp, which trains Glow on pixels), moved to feature space (our adaptation), on the `sgd` trainer.

A flow is fitted once on the features the heads are trained on (the fitted examples, normalised as the
heads see them) after PCA to `pca_dim` dimensions (bench.flows: fitted once, cached on disk). Each step
replaces every example of the batch by its perturbed version (the official `ratio` 1.0):
  p = PCA coordinates of x, z = flow(p);
  `rand`: z' = z + N(0, eps^2) per latent coordinate (the official FlowRandPert);
  `adv`: latent PGD against the current head with the head's own predictions as labels (the official
    FlowAdvPert, "avoid label leaking"): a random start uniform in the eps ball, `steps` steps of length
    alpha * eps along sign(grad) (`norm` linf) or grad / ||grad|| (`norm` l2), projected on the eps ball;
  p' = flow^-1(z'), x' = x + V (p' - p): decoded, with the PCA residual of x added back; the head is
  trained on x' with the true labels.
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


def project(delta, eps, norm: str) -> torch.Tensor:
    """delta [G, B, k] onto the ball of radius eps [G, 1, 1] (per example) of `norm`."""
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    length = delta.norm(dim=-1, keepdim=True)
    return delta / torch.maximum(length / eps.clamp_min(1e-30), torch.ones_like(length))


def latent_pgd(codec, W, xW, p, z, start, hp) -> torch.Tensor:
    """The adversarial latent offset delta [G, B, k] of each head (module docstring)."""
    eps, norm = hp["eps"], hp["norm"]
    pred = torch.nn.functional.one_hot(xW.argmax(-1), W.shape[1]).to(xW.dtype)  # the head's own labels
    WV = W @ codec.basis  # [G, C, k]
    delta = project(eps * start, eps, norm)
    for _ in range(hp["steps"]):
        delta.requires_grad_(True)
        with torch.enable_grad():
            p_new = codec.decode(z + delta)
            r = logit_grad_at(xW + (p_new.detach() - p) @ WV.transpose(1, 2), pred, hp)  # d loss / d logits
            (grad,) = torch.autograd.grad(p_new, delta, grad_outputs=r @ WV)  # through the flow only
        with torch.no_grad():
            step = grad.sign() if norm == "linf" else grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            delta = project(delta + hp["alpha"] * eps * step, eps, norm)
    return delta.detach()


def offsets(codec, W, xW, p, z, noise, hp) -> torch.Tensor:
    """The latent perturbation [G, B, k] of each head from a standard normal draw `noise` [G, B, k]:
    eps * noise for a `rand` head; for an `adv` head (hp["adv"] [G, 1, 1]), the PGD from a random start
    uniform in [-1, 1]^k (the normal draw through its CDF), scaled to the ball."""
    out = hp["eps"] * noise
    if hp["adv"].any():
        h = head_index(hp["adv"])  # fit orders the heads: the adv ones are contiguous
        sub = {k: hp[k][h] for k in ("eps", "alpha", "lamda", "delta")} | {k: hp[k] for k in ("norm", "steps")}
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
