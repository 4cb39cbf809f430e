"""Latent perturbations of each training batch (method=finetune_flow): the flow seed in its native form
(Yuksel et al., ICCV 2021), as its official code does them (okyksl/flow-lp, flpert/pert.py).

The training views are made at the Glow's resolution in [0, 1]; each micro-batch is
  z = glow(x) (dequantised with fresh noise, as the official encoder), then
  `rand`: z' = z + d, d ~ N(0, eps^2) per latent value, projected on the eps ball of `norm` (l2 / linf;
      `none`: not projected) - FlowRandPert;
  `adv`: latent PGD against the classifier being trained, with its own predictions on the clean images as
      labels ("avoid label leaking"): a start uniform in [-eps, eps] per value (projected on the L2 ball for
      l2), `pgd_steps` steps of length `alpha` (absolute, as the official code) along sign(grad) (linf) or
      grad / ||grad|| (l2), projected on the ball after each - FlowAdvPert;
  x' = glow^-1(z') clamped to [0, 1]; each example keeps its clean view with probability 1 - ratio (the
official `ratio`, 1.0 in every official config: every example perturbed). Then every view is resized to the
backbone's input size and normalised. The Glow is frozen; the classifier runs in the mode the loop keeps it
(training mode, as the official code's `conv: auto`: its BatchNorm sees the PGD's batches too). The noise of
a micro-batch is drawn from a generator seeded by (seed, step, micro-batch): a resumed run draws the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import UserError

MODES, NORMS, DECODES = ("rand", "adv"), ("l2", "linf", "none"), ("official", "exact")
STREAM = 7_919  # offset of the perturbations' seeds from the views'


def check(params: dict, grid: dict) -> None:
    """One sentence for perturbation settings that would fail only after the Glow is trained."""
    values = {k: [params[k], *grid.get(k, [])] for k in ("mode", "norm", "eps", "alpha", "pgd_steps", "ratio",
                                                          "decode")}
    for name, allowed in (("mode", MODES), ("norm", NORMS), ("decode", DECODES)):
        if bad := [v for v in values[name] if v not in allowed]:
            raise UserError(f"method.params.{name} must be one of {', '.join(allowed)}, not {bad[0]!r}")
    if "adv" in values["mode"] and "none" in values["norm"]:
        raise UserError("mode adv needs a ball: method.params.norm must be l2 or linf, not none")
    for name, ok, what in (("eps", lambda v: v > 0, "a positive number"), ("alpha", lambda v: v > 0, "a positive number"),
                           ("ratio", lambda v: 0 <= v <= 1, "a number in [0, 1]")):
        if bad := [v for v in values[name] if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v)]:
            raise UserError(f"method.params.{name} must be {what}, not {bad[0]!r}")
    if bad := [v for v in values["pgd_steps"] if isinstance(v, bool) or not isinstance(v, int) or v < 1]:
        raise UserError(f"method.params.pgd_steps must be a positive integer, not {bad[0]!r}")


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """delta [B, ...] onto the ball of radius eps of `norm`, per example (the official clamp / rescaling)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    if norm == "none":
        return delta
    length = delta.flatten(1).norm(dim=1).view(-1, *[1] * (delta.dim() - 1))
    return delta / torch.maximum(length / eps, torch.ones_like(length))


def latent_pgd(decode, classify, z, labels, start, *, eps: float, alpha: float, steps: int, norm: str):
    """The adversarial latent offset: `steps` ascent steps on the cross-entropy of classify(decode(z + delta))
    against `labels`, from `start` (already in the ball), each projected on the eps ball of `norm`."""
    delta = start.detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(classify(decode(z + delta)).float(), labels)
            (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            g = grad.flatten(1)
            # l2: the official divides by the norm unguarded; a zero gradient gives 0 here, not NaN
            g = g.sign() if norm == "linf" else g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
            delta = project(delta + alpha * g.view_as(delta), eps, norm).detach()
    return delta


class Latent:
    """The per-micro-batch hook of bench.finetune.loop.train: views at the Glow's resolution in, perturbed
    and normalised views at the backbone's input size out."""

    def __init__(self, glow, *, point: dict, preprocess: dict, amp: bool):
        self.glow, self.point, self.amp = glow, point, amp
        self.side, self.size = point["glow"]["resolution"], preprocess["crop"]
        self.mode = preprocess["interpolation"] if preprocess["interpolation"] in ("bilinear", "bicubic") \
            else "nearest"
        self.mean = None if preprocess["mean"] is None else torch.tensor(preprocess["mean"]).view(1, -1, 1, 1)
        self.std = None if preprocess["std"] is None else torch.tensor(preprocess["std"]).view(1, -1, 1, 1)

    def views(self, recipe: dict) -> dict:
        """The loop's view recipe, made at the Glow's resolution and left in [0, 1]."""
        return {**recipe, "size": self.side, "mean": None, "std": None}

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] at the Glow's side -> the backbone's input: resized, clamped, normalised."""
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode,
                              antialias=self.mode != "nearest" and self.size < x.shape[-1]).clamp(0, 1)
        if self.mean is None:
            return x
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def __call__(self, net, x: torch.Tensor, *, step: int, micro: int) -> torch.Tensor:
        """x [m, V, 3, side, side] in [0, 1] -> [m, V, 3, size, size], perturbed and normalised."""
        m, views = x.shape[:2]
        flat = x.flatten(0, 1)
        gen = torch.Generator(device=x.device).manual_seed(
            (self.point["seed"] * 1_000_003 + step * 1_009 + micro + STREAM) % 2**63)
        out = self.perturb(flat, net, gen)
        return self.to_input(out).unflatten(0, (m, views))

    def classify(self, net, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return net(self.to_input(x))

    def perturb(self, x: torch.Tensor, net, gen: torch.Generator) -> torch.Tensor:
        p, draw = self.point, lambda f: f(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        eps, norm = p["eps"], p["norm"]
        with torch.no_grad():
            z = self.glow.encode(x, draw(torch.rand))
        if p["mode"] == "rand":
            delta = project(eps * draw(torch.randn), eps, norm)
        else:
            with torch.no_grad():
                labels = self.classify(net, x).argmax(1)
            start = project((2 * draw(torch.rand) - 1) * eps, eps, norm if norm == "l2" else "none")
            delta = latent_pgd(lambda v: self.glow.decode(v, exact=p["decode"] == "exact"),
                               lambda v: self.classify(net, v), z, labels, start, eps=eps, alpha=p["alpha"],
                               steps=p["pgd_steps"], norm=norm)
        with torch.no_grad():
            out = self.glow.decode(z + delta, exact=p["decode"] == "exact").clamp(0, 1)
            keep = torch.rand(len(x), generator=gen, device=x.device) > p["ratio"]
            return torch.where(keep.view(-1, 1, 1, 1), x, out)
