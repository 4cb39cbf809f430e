"""SeA's augmentation against a plain loop over the formula of the paper / reference code."""

import math

import pytest
import torch
import torch.nn.functional as F
from reference import reference_augment

from bench.methods import sea


def direction_loop(x, grad, alpha):
    """d_i from the literal recipe: softmax over all j, zero the diagonal, renormalise, project, normalise."""
    n, _ = x.shape
    g = [grad[i] / grad[i].norm() for i in range(n)]
    out = []
    for i in range(n):
        e = [math.exp(float(g[i] @ x[j]) / alpha) for j in range(n)]
        p = [v / sum(e) for v in e]
        p[i] = 0.0
        p = [v / sum(p) for v in p]
        d = sum(p[j] * x[j] for j in range(n))
        out.append(d / d.norm())
    return torch.stack(out)


# (dtype, rtol, atol): float32 is what real runs use; the loop / autograd references compute in the same dtype
PRECISIONS = [(torch.float64, 1e-9, 1e-12), (torch.float32, 1e-5, 1e-6)]


@pytest.mark.parametrize("dtype,rtol,atol", PRECISIONS)
def test_direction_matches_the_loop(dtype, rtol, atol):
    torch.manual_seed(0)
    x = F.normalize(torch.randn(2, 7, 5, dtype=torch.float64), dim=-1)
    grad = torch.randn(2, 7, 5, dtype=torch.float64)
    alpha = torch.tensor([0.5, 2.0], dtype=torch.float64).view(-1, 1, 1)
    got = sea.direction(x.to(dtype), grad.to(dtype), alpha.to(dtype))
    assert got.dtype == dtype
    for g in range(2):  # the loop in float64: the exact value
        want = direction_loop(x[g], grad[g], float(alpha[g])).to(dtype)
        torch.testing.assert_close(got[g], want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype,rtol,atol", PRECISIONS)
def test_augment_matches_the_reference_recipe(dtype, rtol, atol):
    torch.manual_seed(1)
    G, B, D, C = 3, 9, 6, 4
    x = F.normalize(torch.randn(G, B, D, dtype=torch.float64), dim=-1).to(dtype)
    y = torch.randint(0, C, (G, B))
    W = torch.randn(G, C, D, dtype=torch.float64).to(dtype)
    hp = {k: torch.tensor(v, dtype=dtype).view(-1, 1, 1) for k, v in
          {"eta": [0.1, 0.8, 0.3], "alpha": [0.3, 1.0, 0.5], "delta": [0.0, 0.2, 0.5], "lamda": [0.1, 1.0, 0.5]}.items()}
    got = sea.augment(W, x, F.one_hot(y, C).to(dtype), hp)
    assert got.dtype == dtype
    for g in range(G):
        want = reference_augment(x[g], y[g], W[g], **{k: float(v[g]) for k, v in hp.items()})
        torch.testing.assert_close(got[g], want, rtol=rtol, atol=atol)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(G, B, dtype=dtype), rtol=rtol, atol=atol)


def test_a_batch_of_one_is_left_as_it_is():
    x = F.normalize(torch.randn(2, 1, 4, dtype=torch.float64), dim=-1)
    hp = {k: torch.ones(2, 1, 1, dtype=torch.float64) for k in ("eta", "alpha", "delta", "lamda")}
    assert torch.equal(sea.augment(torch.randn(2, 3, 4, dtype=torch.float64), x, torch.eye(3, dtype=torch.float64)[torch.tensor([[0], [1]])], hp), x)


@pytest.mark.parametrize("dtype,rtol,atol", PRECISIONS)
def test_the_training_step_in_the_batch_span_equals_the_literal_recipe(dtype, rtol, atol):
    """`weight_grad` (the step computed from x W^T and the Gram matrices) = the gradient of the loss of
    `augment`'s batch, for several heads on two seeds' batches, with D > B so that the span form is used."""
    from bench.methods.sgd import batch_grad

    torch.manual_seed(2)
    S, G, B, D, C = 2, 5, 12, 40, 6
    xs = F.normalize(torch.randn(S, B, D, dtype=torch.float64), dim=-1).to(dtype)
    xs[1, 3] = xs[1, 4]  # a repeated example
    slot = torch.tensor([0, 1, 0, 1, 1])
    W = torch.randn(G, C, D, dtype=torch.float64).to(dtype)
    y1 = F.one_hot(torch.randint(0, C, (G, B)), C).to(dtype)
    hp = {k: torch.tensor(v, dtype=dtype).view(-1, 1, 1) for k, v in
          {"eta": [0.05, 0.8, 0.3, 2.0, 0.1], "alpha": [0.01, 1.0, 0.1, 0.05, 0.3],
           "delta": [0.0, 0.2, 0.0, 0.5, 0.1], "lamda": [0.1, 1.0, 0.1, 0.5, 0.2]}.items()}
    got = sea.weight_grad(W, xs, slot, y1, hp)
    assert got.dtype == dtype
    torch.testing.assert_close(got, batch_grad(W, xs, slot, y1, hp, sea.augment), rtol=rtol, atol=atol)
