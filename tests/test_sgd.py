"""The stacked SGD trainer: per head, the same as that head trained alone, and as a plain reference loop."""

import pytest
import torch
from reference import reference_train
from sklearn.datasets import load_digits

from bench.methods import sea, sgd

BASE = {"momentum": 0.9, "weight_decay": 1e-4, "batch_size": 64, "epochs": 3, "lamda": 0.1, "delta": 0.0,
        "center": False}


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return torch.tensor(data.data[:300], dtype=torch.float64), torch.tensor(data.target[:300])


def points(extra):
    return [dict(BASE, seed=s, lr=lr, center=c) | extra for s in (0, 3) for lr in (0.5, 1.6) for c in (False, True)]


METHODS = [(sgd, {}), (sea, {"eta": 0.4, "alpha": 0.05, "delta": 0.2})]
# (dtype, rtol, atol): float32 is what real runs use; its rounding differs between a stacked and a lone
# product (other BLAS kernels) and grows over 15 steps, SeA's sharp softmax (alpha 0.05) amplifying it
PRECISIONS = [(torch.float64, 1e-9, 1e-12), (torch.float32, 1e-4, 1e-5)]  # float32: ~10x what we see


@pytest.mark.parametrize("method,extra", METHODS)
@pytest.mark.parametrize("dtype,rtol,atol", PRECISIONS)
def test_stacked_heads_equal_heads_trained_alone(digits, method, extra, dtype, rtol, atol):
    X, y = digits
    X, pts = X.to(dtype), points(extra)
    stacked = method.fit(X, y, num_classes=10, points=pts, device="cpu")
    assert stacked.weight.dtype == dtype
    for i, p in enumerate(pts):
        alone = method.fit(X, y, num_classes=10, points=[p], device="cpu")
        torch.testing.assert_close(stacked.weight[i], alone.weight[0], rtol=rtol, atol=atol)
        # the bias is -W shift: W's tolerance times |shift|_1 (~300 on digits pixels when centred)
        bias_atol = atol * max(1.0, float(X.mean(0).abs().sum())) if p["center"] else atol
        torch.testing.assert_close(stacked.bias[i], alone.bias[0], rtol=rtol, atol=bias_atol)


@pytest.mark.parametrize("method,extra", METHODS)
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-6, 1e-8), (torch.float32, 1e-4, 1e-5)])
def test_stacked_heads_equal_the_reference_loop(digits, method, extra, dtype, rtol, atol):
    X, y = digits
    X, pts = X.to(dtype), points(extra)
    heads = method.fit(X, y, num_classes=10, points=pts, device="cpu")
    assert len({round(float(w.norm()), 6) for w in heads.weight}) == len(pts)  # the heads differ
    # float64: SeA's sharp softmax (alpha 0.05) amplifies rounding differences a little
    for i, p in enumerate(pts):
        W, shift = reference_train(X, y, num_classes=10, **p)
        assert W.dtype == dtype
        torch.testing.assert_close(heads.weight[i], W, rtol=rtol, atol=atol)
        # the bias is -W shift: W's tolerance times |shift|_1 (~300 on digits pixels when centred)
        torch.testing.assert_close(heads.bias[i], -W @ shift, rtol=rtol, atol=atol * max(1.0, float(shift.abs().sum())))


def test_training_lowers_the_loss_and_predicts(digits):
    """The trained loss, lamda * CE(W normalize(x) / lamda), falls with every stage of training from the
    seeded initial head (0 epochs) to a fraction of its start; and the head predicts."""
    X, y = digits
    p = dict(BASE, seed=0, lr=1.6)
    Xn = torch.nn.functional.normalize(X, dim=1)

    def loss(epochs):
        W = sgd.fit(X, y, num_classes=10, points=[dict(p, epochs=epochs)], device="cpu").weight[0]
        return p["lamda"] * torch.nn.functional.cross_entropy(Xn @ W.T / p["lamda"], y).item()

    losses = [loss(e) for e in (0, 1, 5, 30)]
    assert losses[0] > losses[1] > losses[2] > losses[3] and losses[3] < 0.25 * losses[0], losses
    heads = sgd.fit(X, y, num_classes=10, points=[dict(p, epochs=30)], device="cpu")
    assert (heads.predict(X)[0] == y).double().mean() > 0.95


def test_scratch_is_one_buffer_per_stack_grown_when_too_small():
    hp, like = {}, torch.zeros(1)
    a = sgd.scratch(hp, (2, 3, 4), like)
    b = sgd.scratch(hp, (2, 2, 4), like)  # a smaller batch (the epoch's last) reuses it, contiguous
    assert b.data_ptr() == a.data_ptr() and b.is_contiguous() and b.shape == (2, 2, 4)
    c = sgd.scratch(hp, (3, 3, 4), like)
    assert c.shape == (3, 3, 4) and hp["scratch_d"].numel() == 36
    assert sgd.scratch(hp, (2, 3), like.double()).dtype == torch.float64
    assert sgd.scratch(hp, (2, 3), like, "move").data_ptr() != sgd.scratch(hp, (2, 3), like).data_ptr()
