"""`noise`'s step against autograd of the loss of the noisy features, written out per head; the seed-major
products of the SGD family against the per-head ones."""

import pytest
import torch
import torch.nn.functional as F

from bench.methods import noise, sgd

# seed-major; two seed-major runs (as `within` orders a stack); per head (in no such order)
SLOTS = [torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 0, 1]), torch.tensor([0, 1, 0, 1, 1, 0])]
IDS = ["seed-major", "runs", "per-head"]


@pytest.mark.parametrize("slot", SLOTS, ids=IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_step_equals_autograd_of_the_loss_on_noisy_features(slot, dtype, tol):
    gen = torch.Generator().manual_seed(0)
    S, B, D, C, G = 2, 12, 6, 4, len(slot)
    xs = torch.randn(S, B, D, generator=gen, dtype=dtype)
    W = torch.randn(G, C, D, generator=gen, dtype=dtype)
    y = torch.randint(0, C, (G, B), generator=gen)
    sigma = torch.tensor([0.1, 0.5, 1.0, 0.2, 0.8, 2.0], dtype=dtype).view(-1, 1, 1)
    hp = {"sigma": sigma, "lamda": torch.full_like(sigma, 0.1), "delta": torch.full_like(sigma, 0.2),
          "noise_gens": [torch.Generator().manual_seed(10 + s) for s in range(S)]}
    got = noise.weight_grad(W, xs, slot, F.one_hot(y, C).to(dtype), hp)
    e = torch.stack([torch.randn(B, D, generator=torch.Generator().manual_seed(10 + s), dtype=dtype) for s in range(S)])
    x = xs[slot] + sigma / D ** 0.5 * e[slot]  # each head's noisy batch
    Wg = W.clone().requires_grad_(True)
    z = x @ Wg.transpose(1, 2) - 0.2 * F.one_hot(y, C).to(dtype)
    loss = 0.1 * F.cross_entropy((z / 0.1).transpose(1, 2), y, reduction="none")
    want = torch.autograd.grad(loss.mean(1).sum(), Wg)[0]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("slot,runs", list(zip(SLOTS, [[(0, 6)], [(0, 4), (4, 6)], None])), ids=IDS)
def test_seed_major_products_equal_the_per_head_ones(slot, runs):
    gen = torch.Generator().manual_seed(1)
    xs, W, r = torch.randn(2, 5, 7, generator=gen), torch.randn(6, 3, 7, generator=gen), torch.randn(6, 5, 3, generator=gen)
    found = sgd.seed_runs(slot, 2)
    assert (None if found is None else [(run.start, run.stop) for run in found]) == runs
    torch.testing.assert_close(sgd.logits_of(xs, W, slot), torch.einsum("gbd,gcd->gbc", xs[slot], W))
    torch.testing.assert_close(sgd.grad_of(r, xs, slot), torch.einsum("gbc,gbd->gcd", r, xs[slot]))
