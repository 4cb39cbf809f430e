"""ISDA against dense formulas written out, the official code's own formula, autograd and Monte Carlo."""

import pytest
import torch
import torch.nn.functional as F

from bench import UserError
from bench.methods import isda


def problem(dtype=torch.float64, seed=0, n=40, D=6, C=4, G=3):
    gen = torch.Generator().manual_seed(seed)
    X = F.normalize(torch.randn(n, D, generator=gen, dtype=dtype), dim=1)
    y = torch.arange(n) % C
    W = torch.randn(G, C, D, generator=gen, dtype=dtype)
    return X, y, W


def dense_covariances(X, y, C, cov, rank):
    """Sigma_c [C, D, D] written out: the biased class covariance, its diagonal, or its probabilistic PCA."""
    out = []
    for c in range(C):
        rows = X[y == c]
        centred = rows - rows.mean(0)
        full = centred.T @ centred / len(rows)
        if cov == "diag":
            out.append(torch.diag(torch.diag(full)))
        elif cov == "full":
            out.append(full)
        else:
            ev, U = torch.linalg.eigh(full)  # ascending
            ev, U = ev.flip(0), U.flip(1)
            rest = ev[rank:].mean()
            out.append(U[:, :rank] @ torch.diag(ev[:rank] - rest) @ U[:, :rank].T + rest * torch.eye(len(ev), dtype=X.dtype))
    return torch.stack(out)


def dense_q(W, Sigma):
    G, C, _ = W.shape
    q = torch.zeros(G, C, C, dtype=W.dtype)
    for g in range(G):
        for c in range(C):
            for j in range(C):
                d = W[g, j] - W[g, c]
                q[g, c, j] = d @ Sigma[c] @ d
    return q


@pytest.mark.parametrize("cov", ["diag", "full", "lowrank"])
def test_quadratic_forms_equal_the_dense_formula(cov):
    X, y, W = problem()
    stats = isda.class_stats(X, y, num_classes=4, cov=cov, rank=2)
    q, _ = isda.quadratic(W, stats["S"], stats["F"])
    torch.testing.assert_close(q, dense_q(W, dense_covariances(X, y, 4, cov, 2)), rtol=1e-10, atol=1e-12)


def test_full_factor_is_the_biased_class_covariance():
    X, y, _ = problem(n=60, D=5, C=3)
    stats = isda.class_stats(X, y, num_classes=3, cov="full", rank=0)
    for c in range(3):
        want = torch.cov(X[y == c].T, correction=0)
        torch.testing.assert_close(stats["F"][c].T @ stats["F"][c], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_augmented_logits_equal_the_official_formula(cov):
    """The official code: aug = y + 0.5 * ratio * (W - w_y) CV_y (W - w_y)^T, diagonal of it per example
    (CIFAR: CV full [C, D, D]; ImageNet: CV diagonal [C, D]); bias-free head, lamda 1."""
    X, y, W = problem(n=30, D=5, C=3, G=1)
    W, ratio = W[0], 0.7
    CV = torch.stack([torch.cov(X[y == c].T, correction=0) for c in range(3)])
    if cov == "diag":
        CV = torch.diagonal(CV, dim1=1, dim2=2)
        sigma2 = ratio * ((W[None] - W[y][:, None]) ** 2 * CV[y][:, None]).sum(2)
    else:
        diff = W[None] - W[y][:, None]  # [N, C, D]
        sigma2 = ratio * torch.diagonal(diff @ CV[y] @ diff.transpose(1, 2), dim1=1, dim2=2)
    official = X @ W.T + 0.5 * sigma2
    stats = isda.class_stats(X, y, num_classes=3, cov=cov, rank=0)
    q, _ = isda.quadratic(W[None], stats["S"], stats["F"])
    ours = isda.augmented((X @ W.T)[None], q, F.one_hot(y, 3).double()[None], ratio, 1.0)[0]
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-12)


def hparams(dtype, G):
    values = {"lambda0": [0.5, 7.5, 2.0], "lamda": [0.1, 1.0, 0.3], "delta": [0.0, 0.2, 0.1]}
    return {k: torch.tensor(v[:G], dtype=dtype).view(-1, 1, 1) for k, v in values.items()} | {"epoch": 0.6}


def autograd_grad(W, xs, slot, y, hp, Sigma):
    """d/dW of lamda * mean CE(z / lamda + lambda / (2 lamda^2) q[y]) with q from dense covariances."""
    W = W.clone().requires_grad_(True)
    total = 0
    for g in range(len(W)):
        lam, T, delta = hp["lambda0"][g, 0, 0] * hp["epoch"], hp["lamda"][g, 0, 0], hp["delta"][g, 0, 0]
        z = xs[slot[g]] @ W[g].T - delta * F.one_hot(y[g], W.shape[1])
        q = dense_q(W[g:g + 1], Sigma)[0]
        total = total + T * F.cross_entropy(z / T + lam / (2 * T ** 2) * q[y[g]], y[g])
    return torch.autograd.grad(total, W)[0]


@pytest.mark.parametrize("seeds,slot", [(2, [0, 1, 0]), (1, [0, 0, 0])], ids=["mixed", "seed-major"])
@pytest.mark.parametrize("cov", ["diag", "full", "lowrank"])
def test_training_step_equals_autograd_of_the_isda_loss(cov, seeds, slot, monkeypatch):
    X, y, W = problem(n=48, D=5, C=4, G=3)
    stats = isda.class_stats(X, y, num_classes=4, cov=cov, rank=2)
    xs, slot = X[:24].view(2, 12, 5)[:seeds], torch.tensor(slot)
    labels = y[:24].view(2, 12)[slot]
    labels[labels == 2] = 0  # a class with no example in the batches: no q row of its own
    hp = hparams(torch.float64, 3) | {"stats": stats}
    want = autograd_grad(W, xs, slot, labels, hp, dense_covariances(X, y, 4, cov, 2))
    monkeypatch.setattr(isda, "BUDGET", 16 * 3)  # one head per chunk: the chunked path gives the same
    for budget in (isda.BUDGET, 2 ** 24):
        monkeypatch.setattr(isda, "BUDGET", budget)
        got = isda.weight_grad(W, xs, slot, F.one_hot(labels, 4).double(), hp)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # float32, what real runs use
    hp32 = {k: v.float() if torch.is_tensor(v) else v for k, v in hp.items()}
    hp32["stats"] = {k: None if v is None else v.float() for k, v in stats.items()}
    got32 = isda.weight_grad(W.float(), xs.float(), slot, F.one_hot(labels, 4).float(), hp32)
    torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=1e-5)


def test_isda_loss_bounds_the_expected_loss_under_gaussian_sampling():
    """lamda * CE of the augmented logits >= E[lamda * CE(W x~ / lamda)], x~ ~ N(x, lambda Sigma_y) (Jensen),
    and close to it for a small lambda."""
    X, y, W = problem(n=30, D=4, C=3, G=1)
    W = W[0] * 2
    stats = isda.class_stats(X, y, num_classes=3, cov="full", rank=0)
    Sigma = torch.einsum("crd,cre->cde", stats["F"], stats["F"])
    q, _ = isda.quadratic(W[None], stats["S"], stats["F"])
    gen = torch.Generator().manual_seed(1)
    # the features' class covariances are ~I/4 here: lambda 0.5 spreads the logits widely (a loose bound),
    # the small lambdas do not (a tight one)
    for lam, T, close in [(0.5, 1.0, None), (0.02, 1.0, 0.02), (0.004, 0.3, 0.02)]:
        bound = T * F.cross_entropy(isda.augmented((X @ W.T)[None], q, F.one_hot(y, 3).double()[None], lam, T)[0] / T, y,
                                    reduction="none")
        L = torch.linalg.cholesky(lam * Sigma + 1e-12 * torch.eye(4, dtype=X.dtype))  # [C, D, D]
        eps = torch.randn(20000, len(y), 4, generator=gen, dtype=X.dtype)
        samples = X + (L[y] @ eps[..., None])[..., 0]  # [samples, N, D]
        losses = T * F.cross_entropy((samples @ W.T / T).reshape(-1, 3), y.repeat(20000), reduction="none")
        mc, stderr = losses.view(20000, -1).mean(0), losses.view(20000, -1).std(0) / 20000 ** 0.5
        assert (bound >= mc - 4 * stderr).all()
        if close:
            assert (bound.mean() - mc.mean()) / mc.mean() < close  # the mean loss: what training sees


def test_bad_cov_and_oversized_full_factors_are_one_sentence():
    y = torch.arange(10) % 2
    with pytest.raises(UserError, match="unknown method.params.cov 'dense'"):
        isda.check(y, num_classes=2, dim=4, points=[{"cov": "dense", "rank": 2}])
    y = torch.arange(300_000) % 100  # CIFAR-100-like: 3,000 examples per class span all 2048 dimensions
    with pytest.raises(UserError, match="cov=full needs a"):
        isda.check(y, num_classes=100, dim=2048, points=[{"cov": "full", "rank": 2}])


@pytest.mark.parametrize("cov", ["diag", "full", "lowrank"])
def test_spectral_norm_is_the_largest_eigenvalue_of_the_dense_covariances(cov):
    X, y, _ = problem(n=60, D=6, C=3)
    stats = isda.class_stats(X, y, num_classes=3, cov=cov, rank=2)
    dense = torch.linalg.eigvalsh(dense_covariances(X, y, 3, cov, 2)).max()
    torch.testing.assert_close(isda.spectral_norm(stats), dense, rtol=1e-10, atol=1e-12)


def spread_classes(n=400, D=16, C=4, dtype=torch.float32):
    """Classes with one direction of large spread each (a class's largest covariance eigenvalue ~0.4 on
    the unit sphere), as the random-init ResNet's features have."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % C
    means, axes = torch.randn(C, D, generator=gen), torch.randn(C, D, generator=gen)
    sign = torch.randint(0, 2, (n, 1), generator=gen) * 2 - 1
    X = means[y] + 1.5 * sign * axes[y] + 0.3 * torch.randn(n, D, generator=gen)
    return X.to(dtype), y


def isda_points(lambda0, cov="lowrank"):
    return [{"lambda0": lambda0, "cov": cov, "rank": 2, "seed": 0, "lr": 1.6, "momentum": 0.9, "weight_decay": 1e-6,
             "batch_size": 64, "epochs": 10, "lamda": 0.1, "delta": 0.0, "center": True}]


def test_the_curvature_cap_keeps_large_lambda_finite_where_lr_alone_diverges(monkeypatch):
    """float32, as real runs: uncapped, lambda0 10 with a lowrank covariance at lr 1.6 overflows; capped, each
    epoch's step is min(lr, (1 + momentum) / L_t) with L_t from the dense covariances, and the head learns."""
    X, y = spread_classes()
    capped = isda.fit(X, y, num_classes=4, points=isda_points(10.0) + isda_points(0.0), device="cpu")
    assert [f["stop"] for f in capped.fits] == ["epochs", "epochs"]
    assert (capped.predict(X) == y).float().mean(1).min() > 0.9
    Xn = F.normalize(X.double() - X.double().mean(0), dim=1)
    sigma = torch.linalg.eigvalsh(dense_covariances(Xn, y, 4, "lowrank", 2)).max()
    last = 10.0 * 9 / 10  # lambda at the last epoch, the largest
    assert capped.fits[0]["lr_min"] == pytest.approx(1.9 / (2 * last * float(sigma) / 0.1), rel=1e-4)
    assert capped.fits[0]["lr_min"] < 0.1
    assert capped.fits[1]["lr_min"] == pytest.approx(1.6)  # lambda0 0: the cap never binds
    monkeypatch.setattr(isda, "step_size", lambda hp: hp["lr"])
    uncapped = isda.fit(X, y, num_classes=4, points=isda_points(10.0), device="cpu")
    assert uncapped.fits[0]["stop"] == "diverged"


def test_auto_is_full_where_its_factor_fits_then_lowrank_then_diag_and_the_record_says_which(monkeypatch):
    """The paper's full covariance by default; the fallbacks in order when the factor breaks the memory rule."""
    y = torch.arange(300_000) % 100  # CIFAR-100-like at 2048 dimensions: full needs 100 x 2048 x 2048
    assert isda.resolve(y, num_classes=100, dim=2048, cov="auto", rank=8) == "lowrank"
    assert isda.resolve(y, num_classes=100, dim=2 ** 22, cov="auto", rank=8) == "diag"  # lowrank too: 100 x 8 x 4M
    assert isda.resolve(y, num_classes=100, dim=64, cov="auto", rank=8) == "full"
    assert isda.resolve(y, num_classes=100, dim=2048, cov="diag", rank=8) == "diag"  # asked for: as it is
    X, y = spread_classes(n=120, D=8)
    heads = isda.fit(X, y, num_classes=4, points=isda_points(0.5, cov="auto") + isda_points(0.5, cov="diag"), device="cpu")
    assert [f["cov"] for f in heads.fits] == ["full", "diag"]
    full = isda.fit(X, y, num_classes=4, points=isda_points(0.5, cov="full"), device="cpu")
    torch.testing.assert_close(heads.weight[0], full.weight[0], rtol=0, atol=0)  # auto trained exactly as full
    monkeypatch.setattr(isda, "LIMIT", 4 * 2 * 8)  # room for a rank-2 factor, not for full's 8 rows
    small = isda.fit(X, y, num_classes=4, points=isda_points(0.5, cov="auto"), device="cpu")
    assert small.fits[0]["cov"] == "lowrank"
    with pytest.raises(UserError, match="cov=full needs a"):
        isda.fit(X, y, num_classes=4, points=isda_points(0.5, cov="full"), device="cpu")
