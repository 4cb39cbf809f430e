"""`augself_linear`: AugSelf's linear probe (Lee et al., NeurIPS 2021; github.com/hankook/AugSelf,
transfer_linear_eval.py), to its objective and its optimiser settings:

    f_w(W, b) = sum_i CE(W x_i + b, y_i) + w * (||W||^2 + ||b||^2)

- raw features (no standardisation, no normalisation), a summed (not mean) cross-entropy, the bias penalised;
- torch.optim.LBFGS with lr 1, strong-Wolfe line search, a fresh optimiser per w (AugSelf: max_iter 5000,
  tolerance_grad 1e-10, tolerance_change 0, history_size 100, torch's default);
- one classifier carried through the sweep in increasing w (AugSelf's order, torch.logspace(-6, 5, 45)),
  each fit starting where the previous one ended, from nn.Linear's initialisation (U(-1/sqrt(D), 1/sqrt(D))
  for weight and bias; AugSelf's is unseeded, ours is seeded by the point's `seed`);
- `init`: the heads to start each point from instead (protocol=augself refits its chosen classifier on
  train+val from where the sweep left it, as AugSelf does).

The gradients are written in closed form (p - onehot(y)) x^T + 2 w W: the test checks them, and the optimum,
against autograd of the literal objective under an independent torch.optim.LBFGS run.
"""

from __future__ import annotations

import logging

import torch

from bench.methods import Heads

log = logging.getLogger(__name__)


def objective(W, b, X, Y1, w):
    """f_w and its gradients with respect to W and b."""
    logp = torch.log_softmax(torch.addmm(b, X, W.T), dim=1)
    loss = -(logp * Y1).sum() + w * (W.pow(2).sum() + b.pow(2).sum())
    residual = logp.exp_().sub_(Y1)  # d (summed CE) / d logits
    return loss, residual.T @ X + (2 * w) * W, residual.sum(0) + (2 * w) * b


def fit_one(X, Y1, w: float, W, b, *, max_iter: int, tolerance_grad: float, tolerance_change: float,
            history_size: int) -> dict:
    """Minimise f_w in place from (W, b); how the fit ended (iterations, largest gradient entry, loss)."""
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=tolerance_grad,
                            tolerance_change=tolerance_change, history_size=history_size,
                            line_search_fn="strong_wolfe")

    def closure():
        loss, W.grad, b.grad = objective(W, b, X, Y1, w)
        return loss

    opt.step(closure)
    loss, grad_W, grad_b = objective(W, b, X, Y1, w)
    iterations = opt.state[opt.param_groups[0]["params"][0]]["n_iter"]
    grad = max(grad_W.abs().max().item(), grad_b.abs().max().item())
    return {"penalty": w, "iterations": iterations, "max_grad": grad, "loss": loss.item(),
            "converged": grad <= tolerance_grad, "hit_max_iter": iterations >= max_iter,
            "stop": "tol" if grad <= tolerance_grad else "max_iter" if iterations >= max_iter else "no progress"}


def initial(num_classes: int, dim: int, seed: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's initialisation (kaiming_uniform with a=sqrt(5) is U(-1/sqrt(D), 1/sqrt(D))), seeded."""
    g = torch.Generator().manual_seed(seed)
    bound = dim ** -0.5
    W = (torch.rand(num_classes, dim, generator=g, dtype=torch.float64) * 2 - 1) * bound
    b = (torch.rand(num_classes, generator=g, dtype=torch.float64) * 2 - 1) * bound
    return W.to(device, dtype), b.to(device, dtype)


def fit(X, y, *, num_classes: int, points: list[dict], device, init: Heads | None = None) -> Heads:
    """One head per point (`penalty`, `seed`, LBFGS settings, `dtype`), in the order of `points`.

    Without `init`, the points of one seed form one chain in increasing penalty; with it, point i starts
    from head i of `init`. The heads carry `fits`: how each point's fit ended, in the order of `points`."""
    dtype = {"float32": torch.float32, "float64": torch.float64}[points[0]["dtype"]]
    X = X.to(device, dtype)
    Y1 = torch.nn.functional.one_hot(y.to(device), num_classes).to(dtype)
    weights, biases, fits = [None] * len(points), [None] * len(points), [None] * len(points)
    order = sorted(range(len(points)), key=lambda i: (points[i]["seed"], points[i]["penalty"]))
    previous_seed = None
    for i in order:
        p = points[i]
        if init is not None:
            W, b = init.weight[i].to(device, dtype).clone(), init.bias[i].to(device, dtype).clone()
        elif p["seed"] != previous_seed:  # a new chain
            W, b = initial(num_classes, X.shape[1], p["seed"], dtype, device)
        previous_seed = p["seed"]
        fits[i] = fit_one(X, Y1, p["penalty"], W, b, max_iter=p["max_iter"], tolerance_grad=p["tolerance_grad"],
                          tolerance_change=p["tolerance_change"], history_size=p["history_size"])
        weights[i], biases[i] = W.detach().clone(), b.detach().clone()
        log.debug("augself_linear w=%.3g: %d iterations, max |grad| %.3g", p["penalty"], fits[i]["iterations"],
                  fits[i]["max_grad"])
    heads = Heads(torch.stack(weights), torch.stack(biases))
    heads.fits = fits
    return heads
