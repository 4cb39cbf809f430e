"""Plain re-implementations, written the way the SeA reference code is, to check ours against."""

import torch
import torch.nn.functional as F
from torch import nn

from bench.methods.sgd import init_weight


def reference_augment(x, y, W, *, eta, alpha, delta, lamda):
    """The reference code's get_adv + step, with autograd for the gradient w.r.t. the features."""
    x = x.clone().requires_grad_(True)
    logits = x @ W.T - delta * F.one_hot(y, W.shape[0])
    loss = lamda * F.cross_entropy(logits / lamda, y)
    (grad,) = torch.autograd.grad(loss, x)
    x = x.detach()
    prob = torch.softmax(F.normalize(grad, dim=1) @ x.T / alpha, dim=1)
    prob = prob - torch.diag(torch.diag(prob))
    prob = prob / prob.sum(1, keepdim=True)
    return F.normalize(x + eta * F.normalize(prob @ x, dim=1), dim=1)


def reference_train(X, y, *, num_classes, seed, lr, momentum, weight_decay, batch_size, epochs, lamda, delta,
                    center, eta=None, alpha=None):
    """nn.Linear + torch.optim.SGD + autograd, one head, one mini-batch at a time."""
    shift = X.mean(0) if center else torch.zeros_like(X[0])
    X = F.normalize(X - shift, dim=1)
    gen = torch.Generator().manual_seed(seed)  # our convention: initial weights, then permutations
    model = nn.Linear(X.shape[1], num_classes, bias=False).to(X.dtype)
    with torch.no_grad():
        model.weight.copy_(init_weight(gen, num_classes, X.shape[1], X.dtype))
    opt = torch.optim.SGD(model.parameters(), lr, momentum=momentum, weight_decay=weight_decay)
    for _ in range(epochs):
        idx = torch.randperm(len(y), generator=gen)
        xs, ys = X[idx], y[idx]
        for i in range(0, len(y), batch_size):
            bx, by = xs[i:i + batch_size], ys[i:i + batch_size]
            if eta is not None and len(by) > 1:
                bx = reference_augment(bx, by, model.weight.detach(), eta=eta, alpha=alpha, delta=delta, lamda=lamda)
            logits = model(bx) - delta * F.one_hot(by, num_classes)
            loss = lamda * F.cross_entropy(logits / lamda, by)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.weight.detach(), shift


# ---- A-FAN (VITA-Group/CV_A-FAN, Detection/attack_algo.py) ----


def official_mix_feature(clean_feature, adv_feature):
    """CV_A-FAN's attack_algo.mix_feature, re-typed: moments over dim 1, unbiased variance + 1e-5."""
    eps = 1e-5
    mean_cl, std_cl = clean_feature.mean(dim=1, keepdim=True), (clean_feature.var(dim=1, keepdim=True) + eps).sqrt()
    mean_adv, std_adv = adv_feature.mean(dim=1, keepdim=True), (adv_feature.var(dim=1, keepdim=True) + eps).sqrt()
    return (clean_feature - mean_cl) / std_cl * std_adv + mean_adv


def official_sample_points(pointx, pointy, number):
    """CV_A-FAN's attack_algo.get_sample_points, re-typed: x, the lerps at i / (number - 1), then y itself."""
    percent = 1.0 / (number - 1)
    return [pointx] + [torch.lerp(pointx, pointy, i * percent) for i in range(1, number - 1)] + [pointy]
