"""A-FAN: the ascent against the loss it ascends and against the official loop, the re-injection and the step against the official mix_feature and loss."""


import pytest
import torch
import torch.nn.functional as F
from reference import official_mix_feature, official_sample_points

from bench.methods import afan


def problem(dtype=torch.float64, G=3, B=10, D=8, C=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(G, B, D, generator=gen, dtype=dtype), dim=-1)
    W = torch.randn(G, C, D, generator=gen, dtype=dtype)
    y = torch.randint(0, C, (G, B), generator=gen)
    hp = {k: torch.tensor(v, dtype=dtype).view(-1, 1, 1) for k, v in
          {"gamma": [0.1, 0.5, 1.0], "eps": [0.0, 0.3, 2.0], "lamda": [0.1, 1.0, 0.5],
           "delta": [0.0, 0.2, 0.0]}.items()}
    return x, W, y, hp


def losses(W, x, y, hp):
    """Per head and example: lamda * CE((x W^T - delta y) / lamda)."""
    z = torch.einsum("gbd,gcd->gbc", x, W) - hp["delta"] * F.one_hot(y, W.shape[1])
    return hp["lamda"][..., 0] * F.cross_entropy((z / hp["lamda"]).transpose(1, 2), y, reduction="none")


def test_no_ascent_step_lowers_the_loss_of_any_example():
    x, W, y, hp = problem()
    y1 = F.one_hot(y, 4).double()
    before = losses(W, x, y, hp)
    for k in range(1, 6):
        after = losses(W, afan.ascend(W, x, y1, hp, k), y, hp)
        assert (after >= before - 1e-12).all()
        before = after
    assert (after > losses(W, x, y, hp) + 1e-6).all()  # and the ascent moves


def official_pgd(x, W, y, *, gamma, eps, lamda, delta, steps):
    """attack_algo.PGD's loop on one head: autograd, x_adv += gamma * sign(grad), optional L-inf clip."""
    x_adv = x.clone().requires_grad_(True)
    for _ in range(steps):
        z = x_adv @ W.T - delta * F.one_hot(y, W.shape[0])
        (grad,) = torch.autograd.grad(lamda * F.cross_entropy(z / lamda, y), x_adv)
        x_adv.data.add_(gamma * grad.sign())
        if eps > 0:
            x_adv.data = torch.minimum(torch.maximum(x_adv.data, x - eps), x + eps)
    return x_adv.detach()


def test_ascent_equals_the_official_loop_in_our_units():
    x, W, y, hp = problem()
    got = afan.ascend(W, x, F.one_hot(y, 4).double(), hp, 3)
    unit = x.shape[-1] ** -0.5
    for g in range(3):
        want = official_pgd(x[g], W[g], y[g], gamma=float(hp["gamma"][g]) * unit, eps=float(hp["eps"][g]) * unit,
                            lamda=float(hp["lamda"][g]), delta=float(hp["delta"][g]), steps=3)
        torch.testing.assert_close(got[g], want, rtol=1e-12, atol=1e-12)
    assert ((got - x).abs() <= hp["eps"] * unit + 1e-15)[1:].all()  # the clipped heads stay in their ball


def test_mix_is_the_official_mix_feature_and_strengths_its_sample_points():
    gen = torch.Generator().manual_seed(0)
    x, x_adv = torch.randn(6, 16, generator=gen, dtype=torch.float64), torch.randn(6, 16, generator=gen, dtype=torch.float64)
    points = official_sample_points(x, x_adv, 5)
    assert afan.strengths(4) == [0.25, 0.5, 0.75, 1.0]
    for t, point in zip(afan.strengths(4), points[1:]):
        torch.testing.assert_close(afan.mix(x, x_adv, t), official_mix_feature(x, point), rtol=1e-12, atol=1e-12)
    # on a feature map [B, C, H, W] the official moments are over the channels at each position (dim 1):
    # bench.finetune.afan.reinject, its end-to-end form, is the same call
    from bench.finetune import afan as end_to_end
    h, h_adv = torch.randn(2, 5, 3, 3, generator=gen), torch.randn(2, 5, 3, 3, generator=gen)
    torch.testing.assert_close(end_to_end.reinject(h, h_adv), official_mix_feature(h, h_adv))


def official_loss(W, x, y, hp, x_adv, n):
    """A-FAN's loss per head: 0.5 (clean + adversarial) (classification code), or with n strengths the clean
    loss and the n re-injected interpolants with equal weights (Detection/py/train_sat_mix.py: 0.2 x 5 at n 4)."""
    clean = losses(W, x, y, hp).mean(1)
    if n == 0:
        return 0.5 * (clean + losses(W, x_adv, y, hp).mean(1))
    mixed = []
    for g in range(len(W)):
        points = official_sample_points(x[g], x_adv[g], n + 1)
        mixed.append(torch.stack([official_mix_feature(x[g], pt) for pt in points[1:]]))  # [n, B, D]
    total = clean
    for k in range(n):
        total = total + losses(W, torch.stack([m[k] for m in mixed]), y, hp).mean(1)
    return total / (n + 1)


@pytest.mark.parametrize("n", [0, 1, 4])
@pytest.mark.parametrize("seeds,slot", [(2, [0, 1, 1]), (1, [0, 0, 0])], ids=["mixed", "seed-major"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_step_equals_autograd_of_the_official_loss(dtype, tol, seeds, slot, n):
    x, W, y, hp = problem(dtype)
    xs, slot = x[:seeds], torch.tensor(slot)
    y = y[slot]
    y1 = F.one_hot(y, 4).to(dtype)
    hp = hp | {"steps": 2, "reinject": n}
    got = afan.weight_grad(W, xs, slot, y1, hp)
    x_adv = afan.ascend(W, xs[slot], y1, hp, 2)
    Wg = W.clone().requires_grad_(True)
    total = official_loss(Wg, xs[slot], y, hp, x_adv, n).sum()
    torch.testing.assert_close(got, torch.autograd.grad(total, Wg)[0], rtol=tol, atol=tol)


def test_a_bad_reinject_is_one_sentence():
    from bench import UserError

    with pytest.raises(UserError, match="reinject must be a whole number"):
        afan.check([{"reinject": 0.5}])
