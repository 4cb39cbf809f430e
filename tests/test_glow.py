"""The Glow of method=finetune_flow and its latent perturbations: a tiny Glow (8 px) inverts to 1e-4, its
log-determinants are autograd's, and a perturbed batch is the official flow-lp loop's on the same tensors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import UserError
from bench.finetune import glows, perturbation
from bench.finetune.glow import Glow, to_logits

SETTINGS = {"resolution": 8, "levels": 2, "steps_per_level": 2, "hidden": 8, "train_steps": 10, "batch_size": 16,
            "lr": 5e-4, "weight_decay": 5e-5, "warmup_images": 0, "seed": 0}


def tiny_glow(dtype=torch.float32, side=8) -> Glow:
    """A tiny Glow whose couplings are not the identity: ActNorm initialised on a batch, every weight moved."""
    glow = Glow(levels=2, steps=2, hidden=8, seed=0).train()
    gen = torch.Generator().manual_seed(1)
    x = images(32, side, seed=1)
    glow.flow(to_logits(x, torch.rand(x.shape, generator=gen))[0])  # ActNorm's data-dependent initialisation
    with torch.no_grad():
        for p in glow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return glow.eval().to(dtype)


def images(n=6, side=8, seed=0) -> torch.Tensor:
    """Quantised pixels in [0, 1], as ToTensor gives them."""
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed)) / 255


def test_a_tiny_glow_inverts_to_1e_4_in_float32():
    glow, x = tiny_glow(), images()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    y, _ = to_logits(x, noise)
    z, ldj = glow.flow(y)
    assert z.shape == x.shape and z.std() > 0.3
    back, ldj_back = glow.inverse_flow(z)
    torch.testing.assert_close(back, y, rtol=0, atol=1e-4)
    torch.testing.assert_close(ldj_back, -ldj, rtol=0, atol=1e-3)
    dequantised = (255 * x + noise) / 256
    torch.testing.assert_close(glow.decode(glow.encode(x, noise), exact=True), dequantised, rtol=0, atol=1e-4)
    # the official decoder keeps the logit's bounds: the image comes back as 0.05 + 0.9 y
    torch.testing.assert_close(glow.decode(glow.encode(x, noise)), 0.05 + 0.9 * dequantised, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_det_is_autograds_jacobian(dtype):
    """On a 4 px input (48 values): log|det| of the Jacobian of logits -> latent, and of pixels -> logits."""
    glow = tiny_glow(torch.float64, side=4)
    y = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    jac = torch.autograd.functional.jacobian(lambda v: glow.flow(v.view(1, 3, 4, 4))[0].flatten(), y.flatten())
    exact = torch.linalg.slogdet(jac)[1]
    ldj = glow.to(dtype).flow(y.to(dtype))[1]
    assert ldj.dtype == dtype
    torch.testing.assert_close(ldj.double(), exact.view(1), rtol=1e-4 if dtype == torch.float32 else 1e-9,
                               atol=1e-3 if dtype == torch.float32 else 1e-9)
    x, noise = images(1, 4).double(), torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: to_logits(v.view(1, 3, 4, 4), noise)[0].flatten(), x.flatten())
    # to_logits' log|det| is taken from the dequantised y = (255 x + u) / 256: dy/dx = 255 / 256 per value
    torch.testing.assert_close(to_logits(x, noise)[1], torch.linalg.slogdet(jac)[1].view(1) - 48 * math.log(255 / 256))


def test_nll_is_the_change_of_variables_in_nats_with_256_levels():
    glow, x = tiny_glow(torch.float64), images(3).double()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y, ldj_logit = to_logits(x, noise)
    z, ldj = glow.flow(y)
    expected = 0.5 * (z ** 2).flatten(1).sum(1) + 96 * math.log(2 * math.pi) - ldj - ldj_logit + 192 * math.log(256)
    torch.testing.assert_close(glow.nll(x, noise), expected)


# --- the official perturbations (okyksl/flow-lp, flpert/pert.py), re-typed on an official-style flow -----------

class OfficialFlow(nn.Module):
    """Our Glow behind the official interface flow(x, reverse) -> (out, sldj), with a given dequantisation."""

    def __init__(self, glow, noise):
        super().__init__()
        self.glow, self.noise = glow, noise

    def forward(self, x, reverse=False):
        return (self.glow.decode(x), None) if reverse else (self.glow.encode(x, self.noise), None)


def official_adv(flow, conv, tensor, start, *, num_steps, epsilon, alpha, ord):
    """FlowAdvPert.perturb + post_process (clamp [0, 1]), its random start given (drawn uniform in [-eps, eps])."""
    with torch.no_grad():
        labels = torch.argmax(conv(tensor), dim=-1)
    with torch.no_grad():
        tensor, _ = flow(tensor, reverse=False)
    tensor_delta = start.clone()
    if ord != float("inf"):
        tensor_delta = torch.reshape(tensor_delta, (tensor.shape[0], -1))
        delta_norm = torch.linalg.norm(tensor_delta, ord=ord, dim=1, keepdims=True)
        tensor_delta /= torch.max(delta_norm / epsilon, torch.ones_like(delta_norm))
        tensor_delta = torch.reshape(tensor_delta, tensor.shape)
    for _ in range(num_steps):
        tensor_delta.requires_grad = True
        with torch.enable_grad():
            tensor_x, _ = flow(tensor + tensor_delta, reverse=True)
            loss = nn.CrossEntropyLoss()(conv(tensor_x), labels)
            grad = torch.autograd.grad(loss, tensor_delta, retain_graph=False, create_graph=False)[0]
        with torch.no_grad():
            grad = torch.reshape(grad, (tensor.shape[0], -1))
            tensor_delta = torch.reshape(tensor_delta, (tensor.shape[0], -1))
            if ord == float("inf"):
                grad = torch.sign(grad)
            else:
                grad = grad / torch.linalg.norm(grad, ord=ord, dim=1, keepdims=True)
            tensor_delta += grad * alpha
            if ord == float("inf"):
                tensor_delta = torch.clamp(tensor_delta, -epsilon, +epsilon)
            else:
                delta_norm = torch.linalg.norm(tensor_delta, ord=ord, dim=1, keepdims=True)
                tensor_delta /= torch.max(delta_norm / epsilon, torch.ones_like(delta_norm))
            tensor_delta = torch.reshape(tensor_delta, tensor.shape).detach()
    with torch.no_grad():
        tensor_x, _ = flow(tensor + tensor_delta, reverse=True)
    return torch.clamp(tensor_x, 0.0, 1.0)


def official_rand(flow, tensor, noise, *, epsilon, ord):
    """FlowRandPert: N(0, eps^2) noise (given), projected when `ord` is set, decoded, clamped to [0, 1]."""
    with torch.no_grad():
        tensor_z, _ = flow(tensor, reverse=False)
    tensor_pert = noise * epsilon
    if ord is not None:
        if ord == float("inf"):
            tensor_pert = torch.clamp(tensor_pert, -epsilon, +epsilon)
        else:
            tensor_pert = torch.reshape(tensor_pert, (tensor.shape[0], -1))
            pert_norm = torch.linalg.norm(tensor_pert, ord=ord, dim=1, keepdims=True)
            tensor_pert /= torch.max(pert_norm / epsilon, torch.ones_like(pert_norm))
            tensor_pert = torch.reshape(tensor_pert, tensor_z.shape)
    with torch.no_grad():
        tensor_x, _ = flow(tensor_z + tensor_pert, reverse=True)
    return torch.clamp(tensor_x, 0.0, 1.0)


def classifier():
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 10))


def hook(glow, **changes):
    point = {"seed": 0, "mode": "adv", "eps": 1.0, "norm": "l2", "pgd_steps": 3, "alpha": 0.5, "ratio": 1.0,
             "decode": "official", "glow": SETTINGS} | changes
    pre = {"crop": 8, "interpolation": "bicubic", "mean": None, "std": None}  # the classifier sees the Glow's pixels
    return perturbation.Latent(glow, point=point, preprocess=pre, amp=False)


@pytest.mark.parametrize("norm,eps,alpha,steps", [("l2", 1.0, 0.5, 3), ("linf", 0.05, 0.05, 2), ("l2", 20.0, 0.5, 1)])
def test_an_adversarial_batch_is_the_official_loops_on_the_same_tensors(norm, eps, alpha, steps):
    glow, conv, x = tiny_glow(), classifier(), images(8)
    latent = hook(glow, eps=eps, norm=norm, alpha=alpha, pgd_steps=steps)
    ours = latent.perturb(x, conv, torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)  # the same draws, in our order: dequantisation, then the start
    noise = torch.rand(x.shape, generator=gen)
    start = (2 * torch.rand(x.shape, generator=gen) - 1) * eps  # uniform in [-eps, eps], the official start
    theirs = official_adv(OfficialFlow(glow, noise), conv, x, start, num_steps=steps, epsilon=eps, alpha=alpha,
                          ord=2 if norm == "l2" else float("inf"))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert (ours - x).abs().max() > 0.05  # a real perturbation was exercised
    # the attack raises the loss against the clean predictions above that of a random offset of the same size
    labels = conv(x).argmax(1)
    rand = hook(glow, mode="rand", eps=eps, norm=norm).perturb(x, conv, torch.Generator().manual_seed(9))
    assert F.cross_entropy(conv(ours), labels) > F.cross_entropy(conv(rand), labels)


@pytest.mark.parametrize("norm", ["l2", "linf", "none"])
def test_a_random_batch_is_the_officials_on_the_same_tensors(norm):
    glow, x = tiny_glow(), images(8)
    eps = 0.2 if norm == "none" else 20.0  # the official rand.yaml (ord null) and CIFAR command (ord 2) radii
    ours = hook(glow, mode="rand", eps=eps, norm=norm).perturb(x, None, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    noise = torch.rand(x.shape, generator=gen)
    theirs = official_rand(OfficialFlow(glow, noise), x, torch.randn(x.shape, generator=gen), epsilon=eps,
                           ord={"l2": 2, "linf": float("inf"), "none": None}[norm])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_ratio_keeps_the_clean_view_of_the_other_examples():
    glow, x = tiny_glow(), images(64)
    assert torch.equal(hook(glow, mode="rand", ratio=0.0).perturb(x, None, torch.Generator().manual_seed(0)), x)
    out = hook(glow, mode="rand", ratio=0.5).perturb(x, None, torch.Generator().manual_seed(0))
    kept = (out == x).flatten(1).all(1)
    assert 16 < int(kept.sum()) < 48


def test_the_hook_resizes_and_normalises_for_the_backbone():
    glow = tiny_glow()
    pre = {"crop": 32, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    point = {"seed": 0, "mode": "rand", "eps": 0.1, "norm": "none", "pgd_steps": 1, "alpha": 0.5, "ratio": 0.0,
             "decode": "official", "glow": SETTINGS}
    latent = perturbation.Latent(glow, point=point, preprocess=pre, amp=False)
    assert latent.views({"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "views": 1}) == \
        {"size": 8, "mean": None, "std": None, "views": 1}
    x = images(4)
    out = latent(None, x.unsqueeze(1), step=0, micro=0)
    assert out.shape == (4, 1, 3, 32, 32)
    up = F.interpolate(x, size=(32, 32), mode="bicubic").clamp(0, 1)
    torch.testing.assert_close(out[:, 0], (up - 0.5) / 0.25)  # ratio 0: the clean views, resized and normalised


def test_settings_that_cannot_work_are_one_sentence_before_any_work():
    with pytest.raises(UserError, match="multiple of 2 \\*\\* levels"):
        glows.check(SETTINGS | {"resolution": 12, "levels": 3})
    with pytest.raises(UserError, match="glow.hidden must be a positive integer"):
        glows.check(SETTINGS | {"hidden": 0})
    with pytest.raises(UserError, match="glow.seed must be a non-negative integer"):
        glows.check(SETTINGS | {"seed": -1})
    with pytest.raises(UserError, match="glow.lr must be a positive number"):
        glows.check(SETTINGS | {"lr": 0})
    params = {"mode": "adv", "eps": 1.0, "norm": "l2", "pgd_steps": 3, "alpha": 0.5, "ratio": 1.0,
              "decode": "official"}
    perturbation.check(params, {"mode": ["rand", "adv"], "eps": [1.0, 20.0]})
    for bad, match in (({"norm": "none"}, "needs a ball"), ({"ratio": 1.5}, "ratio must be a number in"),
                       ({"mode": "away"}, "mode must be one of"), ({"pgd_steps": 0}, "pgd_steps must be"),
                       ({"decode": "fast"}, "decode must be one of")):
        with pytest.raises(UserError, match=match):
            perturbation.check(params | bad, {})
    with pytest.raises(UserError, match="eps must be a positive"):
        perturbation.check(params, {"eps": [1.0, -2.0]})
