"""The L-BFGS probe reaches scikit-learn's LogisticRegression optimum at the same C (= 1 / penalty)."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bench.methods import linear


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    X, y = data.data.astype(np.float64), data.target
    return X[:1000], y[:1000], X[1000:], y[1000:]


@pytest.mark.parametrize("penalty", [1.0, 100.0])
def test_probe_matches_sklearn(digits, penalty):
    Xtr, ytr, Xte, yte = digits
    scaler = StandardScaler().fit(Xtr)
    ref = LogisticRegression(C=1 / penalty, tol=1e-10, max_iter=20000).fit(scaler.transform(Xtr), ytr)
    point = {"penalty": penalty, "max_iter": 20000, "tol": 1e-10, "rtol": 1e-6, "standardize": True}
    heads = linear.fit(torch.tensor(Xtr), torch.tensor(ytr), num_classes=10, points=[point], device="cpu")
    # our heads act on raw features; undo the folded standardisation to compare with sklearn's coefficients
    W = heads.weight[0].numpy() * scaler.scale_
    b = heads.bias[0].numpy() + heads.weight[0].numpy() @ scaler.mean_
    # the same objective value to 1e-9 (relative) and the same weights to 1e-4 of their largest entry:
    # the weakest penalties leave directions so flat that 1e-4 in W is 1e-11 in the objective
    Xs, Y1 = torch.tensor(scaler.transform(Xtr)), torch.nn.functional.one_hot(torch.tensor(ytr), 10).double()
    ours, theirs = (linear.objective(torch.tensor(w), torch.tensor(c), Xs, Y1, penalty)[0].item()
                    for w, c in [(W, b), (ref.coef_, ref.intercept_)])
    assert abs(ours - theirs) <= 1e-9 * theirs
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(W, ref.coef_, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), rtol=0, atol=1e-4 * scale)
    ours, theirs = heads.predict(torch.tensor(Xte))[0].numpy(), ref.predict(scaler.transform(Xte))
    assert (ours != theirs).sum() <= 1  # a point on the decision boundary may fall either way
    assert abs((ours == yte).mean() - (theirs == yte).mean()) <= 1 / len(yte)


def test_warm_started_sweep_equals_separate_fits(digits):
    Xtr, ytr, _, _ = digits
    X, y = torch.tensor(Xtr), torch.tensor(ytr)
    pts = [{"penalty": p, "max_iter": 20000, "tol": 1e-10, "rtol": 1e-6, "standardize": True} for p in (1.0, 1e2, 10.0)]
    sweep = linear.fit(X, y, num_classes=10, points=pts, device="cpu")
    for i, p in enumerate(pts):
        alone = linear.fit(X, y, num_classes=10, points=[p], device="cpu")
        scale = alone.weight.abs().max()
        torch.testing.assert_close(sweep.weight[i], alone.weight[0], rtol=0, atol=1e-4 * float(scale))


def test_objective_gradient_is_the_autograd_gradient():
    torch.manual_seed(0)
    X, W, b = torch.randn(20, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    Y1 = torch.nn.functional.one_hot(torch.randint(0, 3, (20,)), 3).double()
    loss, gW, gb = linear.objective(W, b, X, Y1, 0.7)
    W.requires_grad_(True), b.requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(X @ W.T + b, Y1.argmax(1)) + 0.7 / (2 * 20) * W.pow(2).sum()
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(gW, W.grad)
    torch.testing.assert_close(gb, b.grad)


def standardized_digits(rows=1000):
    X = torch.tensor(load_digits().data[:rows])
    scale = X.std(0, correction=0)
    return (X - X.mean(0)) / torch.where(scale > 0, scale, 1.0), torch.tensor(load_digits().target[:rows])


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype,rtol,agree", [(torch.float64, 1e-4, 1e-3), (torch.float32, 1e-2, 3e-2)])
def test_warm_sweep_at_weak_penalties_equals_cold_fits(dtype, rtol, agree):
    """Each weaker penalty warm-starts from the previous optimum, whose gradient is already below sklearn's
    absolute tol: the rule relative to the penalty must still move it to this penalty's optimum. Float32
    (`float64_max=0`, as GPU runs) resolves these optima less finely: about 1% of |W| at penalty 1e-4."""
    X, y = standardized_digits(600)  # standardised here, so the heads are in the space the rule measures
    penalties = [1e-2, 1e-3, 1e-4] + ([1e-5, 1e-6] if dtype == torch.float64 else [])
    pts = [{"penalty": p, "max_iter": 2000, "tol": 1e-4, "rtol": rtol, "standardize": False} for p in penalties]
    f64max = 1e9 if dtype == torch.float64 else 0
    sweep = linear.fit(X, y, num_classes=10, points=pts, device="cpu", float64_max=f64max)
    assert sweep.weight.dtype == dtype
    for i, p in enumerate(pts):
        alone = linear.fit(X, y, num_classes=10, points=[p], device="cpu", float64_max=f64max)
        assert relative(sweep.weight[i], alone.weight[0]) <= agree, p
        if i:  # adjacent optima differ by 15 to 30% here: the warm fit did not stay where it started
            assert relative(sweep.weight[i], sweep.weight[i - 1]) > 0.1
    assert all(f["iterations"] > 0 for f in sweep.fits)


def test_adjacent_grid_points_are_different_models_where_their_optima_differ():
    """The weak half of the default grid on digits pixels (nearly separable: adjacent optima differ by
    more than 4% of |W|, see above): every head converges, and each differs from its neighbour by more
    than the stopping rule lets two fits of one optimum differ (2 rtol |W|). Before the relative rule,
    the heads at the weakest penalties were one model."""
    X, y = standardized_digits(600)
    params = {"max_iter": 1000, "tol": 1e-4, "rtol": 1e-2, "standardize": False}
    pts = [{**params, "penalty": 10.0 ** (-6 + 11 * i / 44)} for i in range(20)]
    heads = linear.fit(X, y, num_classes=10, points=pts, device="cpu")
    for a, b in zip(heads.weight[:-1], heads.weight[1:]):
        assert relative(a, b) > 2 * params["rtol"] * max(1.0, float(a.norm() / b.norm()))
    assert all(f["converged"] and f["stop"] == "tol" and f["grad_max"] <= 1e-4 for f in heads.fits)


def test_a_fit_that_hits_max_iter_says_so():
    X, y = standardized_digits(300)
    point = {"penalty": 1e-4, "max_iter": 3, "tol": 1e-4, "rtol": 1e-2, "standardize": True}
    heads = linear.fit(X, y, num_classes=10, points=[point], device="cpu")
    assert heads.fits[0]["stop"] == "max_iter" and heads.fits[0]["iterations"] == 3
    assert not heads.fits[0]["converged"] and heads.fits[0]["rel_grad"] > 1e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_init_starts_from_the_given_heads_in_a_different_standardisation(dtype):
    """The refit on train+val starts from heads fitted on train: heads act on raw features, and the refit
    standardises with other moments. With no iterations allowed, the heads come back unchanged."""
    X, y = torch.tensor(load_digits().data[:400]), torch.tensor(load_digits().target[:400])
    point = {"penalty": 1.0, "max_iter": 500, "tol": 1e-4, "rtol": 1e-2, "standardize": True}
    f64max = 1e9 if dtype == torch.float64 else 0
    first = linear.fit(X[:300], y[:300], num_classes=10, points=[point], device="cpu", float64_max=f64max)
    again = linear.fit(X, y, num_classes=10, points=[{**point, "max_iter": 0}], device="cpu", init=first,
                       float64_max=f64max)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(again.weight, first.weight, rtol=0, atol=1e3 * eps * float(first.weight.abs().max()))
    torch.testing.assert_close(again.bias, first.bias, rtol=0, atol=1e3 * eps * float(first.bias.abs().max()))
    if dtype == torch.float64:  # a converged head, given as init on the same rows, needs no iteration
        same = linear.fit(X[:300], y[:300], num_classes=10, points=[point], device="cpu", init=first)
        assert first.fits[0]["converged"] and same.fits[0]["iterations"] == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_column_constant_on_the_fitted_rows_gets_scale_one(dtype):
    """Column 5 holds one value (0.1: not exact in binary, so its mean is rounded) on train and varies
    on test: it must carry no weight, and test predictions must not depend on it."""
    X, y = torch.tensor(load_digits().data[:500]), torch.tensor(load_digits().target[:500])
    X[:, 5] = 0.1
    point = {"penalty": 1e-2, "max_iter": 500, "tol": 1e-4, "rtol": 1e-2, "standardize": True}
    heads = linear.fit(X[:400], y[:400], num_classes=10, points=[point], device="cpu",
                       float64_max=1e9 if dtype == torch.float64 else 0)
    assert (heads.weight[0, :, 5] == 0).all()
    test = X[400:].clone()
    test[:, 5] = torch.linspace(-10, 10, len(test))
    assert torch.equal(heads.predict(test), heads.predict(X[400:]))
    mean, scale, active = linear.moments(X[:400].to(dtype), True)
    assert scale[5] == 1 and mean[5] == X[0, 5].to(dtype)
    assert torch.equal(active, X[:400].amax(0) > X[:400].amin(0)) and not active[5]


def test_float32_sweep_is_certified_and_lands_on_the_cold_float64_optima():
    """float32 products (as on a GPU, `float64_max=0`): every fit of the default grid's weak half ends by the
    rule, the record says in which precision it was shown (float32 products, or float64 once float32 no longer
    resolves f), and each head is within 2 rtol of the optimum fitted alone from zero in float64 to rtol 1e-3 (float64 resolves the weakest
    penalty to about 3e-4)
    (the rule's bound ||W - W*|| <= ||grad|| / mu, checked against an independent high-precision fit)."""
    X, y = standardized_digits(600)
    params = {"max_iter": 1000, "tol": 1e-4, "rtol": 1e-2, "standardize": False}
    pts = [{**params, "penalty": 10.0 ** (-6 + 11 * i / 44)} for i in range(0, 24, 3)]
    heads = linear.fit(X, y, num_classes=10, points=pts, device="cpu", float64_max=0)
    assert heads.weight.dtype == torch.float32
    assert all(f["converged"] and f["certificate"] in ("float32", "float64") for f in heads.fits)
    assert all(f["evaluations"] >= f["iterations"] for f in heads.fits)
    assert heads.fits[-1]["evaluations"] >= heads.fits[-1]["iterations"] + 1  # the sweep's first fit evaluates
    assert any(f["evaluations"] == f["iterations"] for f in heads.fits[:-1])  # at its start, a fit that starts
    # where the last ended reuses that fit's terms
    for i in (0, len(pts) // 2, len(pts) - 1):
        cold = linear.fit(X, y, num_classes=10, points=[{**pts[i], "tol": 1e-10, "rtol": 1e-3, "max_iter": 20000}],
                          device="cpu", float64_max=1e9)
        assert cold.fits[0]["converged"] and cold.fits[0]["iterations"] > 0
        assert relative(heads.weight[i].double(), cold.weight[0]) <= 2 * params["rtol"] + 1e-3, pts[i]["penalty"]


@pytest.mark.parametrize("standardize", [True, False])
def test_the_metric_is_the_inverse_hessian_at_uniform_predictions(standardize):
    """At W = 0 and equal biases every row's softmax curvature is the same A, so the Hessian of f is exactly
    A (x) E[[x, 1][x, 1]^T] plus the penalty on W: the preconditioner's metric, taken through its coordinates
    (`cotangent`, `step`), must then solve the Newton system, checked against autograd's Hessian. Up to the
    bias's one null direction (the same shift of every class's bias: no gradient has a part along it, and
    both solutions are compared with it taken out). Raw features (not standardised) have a mean far from 0:
    the bias's coupling to W is what the preconditioner's shift takes care of."""
    X, y = torch.tensor(load_digits().data[:300]), torch.tensor(load_digits().target[:300])
    mean, scale, active = linear.moments(X, standardize)
    pre = linear.Preconditioner(X, mean, scale, active)  # 300 rows < GRAM_ROWS: the moments of every row
    X, C, D, mu = (X - mean) / scale, 10, X.shape[1], 0.3
    theta = torch.zeros(C, D + 1, dtype=torch.float64)
    _, _, A = linear.mixed_terms(theta, X, y, precise=True)

    def f(flat):  # the objective, written out for autograd
        W, b = flat.view(C, D + 1)[:, :-1], flat.view(C, D + 1)[:, -1]
        return torch.nn.functional.cross_entropy(X @ W.T + b, y) + mu / 2 * W.pow(2).sum()
    H = torch.autograd.functional.hessian(f, theta.flatten())
    active = torch.cat([pre.active, torch.tensor([True])]).repeat(C)  # all-zero columns: no curvature, no step
    g = torch.randn(C, D + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g[:, -1] -= g[:, -1].mean()  # as every gradient: the bias's entries sum to 0 over classes
    g[:, :-1][:, ~pre.active] = 0
    ours = pre.step(pre.metric(A, mu)(pre.cotangent(g)))
    newton = torch.zeros_like(ours).flatten()
    newton[active] = torch.linalg.pinv(H[active][:, active]) @ g.flatten()[active]
    newton = newton.view(C, D + 1)
    for v in (ours, newton):
        v[:, -1] -= v[:, -1].mean()
    torch.testing.assert_close(ours, newton, rtol=0, atol=1e-8 * float(newton.abs().max()))
    assert (ours[:, :-1][:, ~pre.active] == 0).all()


def test_float32_shows_the_rule_only_with_its_measured_rounding_to_spare():
    """A float32 sweep over the whole default grid: a fit is shown with float32 products only with MARGIN
    times float32's rounding of the gradient (measured against float64, recorded) to spare. The terms come
    from the residual P - Y, so that rounding shrinks with the residual: on digits pixels (nearly separable)
    it is at the weakest penalty a small fraction of the strongest's, and float32 shows the rule there too.
    A rule tighter than float32 can resolve (rtol 1e-7) is shown with float64 products."""
    X, y = standardized_digits(600)
    params = {"max_iter": 1000, "tol": 1e-4, "rtol": 1e-2, "standardize": False}
    pts = [{**params, "penalty": 10.0 ** (-6 + 11 * i / 44)} for i in range(45)]
    heads = linear.fit(X, y, num_classes=10, points=pts, device="cpu", float64_max=0)
    shown = [f["certificate"] for f in heads.fits]  # weakest penalty first
    assert all(f["converged"] for f in heads.fits) and {"float32", "float64"} <= set(shown)
    assert shown[:10].count("float32") >= 8 and shown[-10:].count("float32") >= 5
    for f, p in zip(heads.fits, pts):
        if f["certificate"] == "float32":  # ||g|| + MARGIN rounding <= rtol mu ||W||, with rel_grad = ||g|| / (mu ||W||)
            force = np.linalg.norm(heads.weight[pts.index(p)].double().numpy()) * p["penalty"] / len(X)
            assert 0 < f["rounding"] and f["rel_grad"] * force + linear.MARGIN * f["rounding"] <= 1.0001 * params["rtol"] * force
        else:
            assert f["rounding"] is None
    weak, strong = ([f["rounding"] for f in fits if f["rounding"]] for fits in (heads.fits[:10], heads.fits[-10:]))
    assert max(weak) < 1e-2 * min(strong)
    tight = linear.fit(X, y, num_classes=10, points=[{**p, "rtol": 1e-7} for p in pts[::11]], device="cpu",
                       float64_max=0)
    assert all(f["converged"] and f["certificate"] == "float64" for f in tight.fits)


@pytest.mark.parametrize("precise", [False, True])
@pytest.mark.parametrize("standardize", [False, True])
def test_the_data_terms_are_the_same_over_any_row_chunks(precise, standardize):
    """`mixed_terms` sums its terms over row chunks (float64 casts of X when `precise`) and standardises in
    the products, not in X: a chunk of 7 rows (the last one short) must give what autograd gives on the
    whole float64 objective on the standardised features, in either precision."""
    X, y = torch.tensor(load_digits().data[:300], dtype=torch.float32), torch.tensor(load_digits().target[:300])
    mean, scale, _ = linear.moments(X, standardize)
    C, D = 10, X.shape[1]
    theta = 0.1 * torch.randn(C, D + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss, grad, _ = linear.mixed_terms(theta, X, y, mean, scale, precise=precise, chunk=7)
    flat = theta.clone().requires_grad_()
    ce = torch.nn.functional.cross_entropy((X.double() - mean) / scale @ flat[:, :-1].T + flat[:, -1], y)
    ce.backward()
    tol = 1e-12 if precise else 1e-5
    assert abs(loss.item() - ce.item()) < tol * max(1.0, ce.item())
    assert (grad - flat.grad).abs().max() < tol * max(1.0, flat.grad.abs().max().item())


def test_the_sweep_extrapolates_from_estimates_of_the_optima_and_needs_fewer_evaluations(monkeypatch):
    """The sweep's first step of each fit goes to where the last two optima extrapolate, taken as one
    untaken L-BFGS step beyond where their fits ended (`state["estimate"]`, no evaluation); from the
    fits' ends themselves (their error within the rule, doubled by the secant) the same sweep must need
    more evaluations (on digits: 194 against 214) and reach the same heads within the rule."""
    X, y = standardized_digits(1000)
    params = {"max_iter": 1000, "tol": 1e-4, "rtol": 1e-2, "standardize": True}
    pts = [{**params, "penalty": 10.0 ** (-6 + 11 * i / 44)} for i in range(45)]
    ours = linear.fit(X, y, num_classes=10, points=pts, device="cpu", float64_max=1e9)
    fit_one = linear.fit_one

    def from_the_ends(X, y, lam, theta, **kwargs):
        record = fit_one(X, y, lam, theta, **kwargs)
        kwargs["state"]["estimate"] = theta.clone()
        return record
    monkeypatch.setattr(linear, "fit_one", from_the_ends)
    ends = linear.fit(X, y, num_classes=10, points=pts, device="cpu", float64_max=1e9)
    assert all(f["converged"] for f in ours.fits + ends.fits)
    evaluations = [sum(f["evaluations"] for f in heads.fits) for heads in (ours, ends)]
    assert evaluations[0] < 0.95 * evaluations[1], evaluations
    for a, b in zip(ours.weight, ends.weight):  # both within 1% of one optimum
        assert relative(a, b) <= 3 * params["rtol"]


@pytest.mark.parametrize("standardize", [True, False])
def test_init_moves_the_weight_of_a_column_constant_on_the_refit_rows_into_the_bias(standardize):
    """Heads fitted where column 5 varies, given as init to a fit on rows where it is constant (3.0): that
    column is not fitted there, so its weight goes into the bias; with no iterations, the logits on those
    rows are unchanged and the column's weight is 0."""
    X, y = torch.tensor(load_digits().data[:600]), torch.tensor(load_digits().target[:600])
    X[300:, 5] = 3.0
    point = {"penalty": 1.0, "max_iter": 500, "tol": 1e-4, "rtol": 1e-2, "standardize": standardize}
    first = linear.fit(X[:300], y[:300], num_classes=10, points=[point], device="cpu")
    assert (first.weight[0, :, 5] != 0).any()
    again = linear.fit(X[300:], y[300:], num_classes=10, points=[{**point, "max_iter": 0}], device="cpu", init=first)
    assert (again.weight[0, :, 5] == 0).all()
    logits = [X[300:] @ h.weight[0].T + h.bias[0] for h in (first, again)]
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-9 * float(logits[0].abs().max()))


@pytest.mark.parametrize("float64_max", [1e9, 0])
def test_the_fit_leaves_the_callers_features_as_they_were(float64_max):
    """The fit keeps no working copy of X (peak memory): it standardises in the products, never in X, which
    is the caller's (a feature cache's) tensor."""
    X = torch.tensor(load_digits().data[:300], dtype=torch.float32)
    before = X.clone()
    point = {"penalty": 1.0, "max_iter": 50, "tol": 1e-4, "rtol": 1e-2, "standardize": True}
    linear.fit(X, torch.tensor(load_digits().target[:300]), num_classes=10, points=[point], device="cpu",
               float64_max=float64_max)
    assert torch.equal(X, before)


def test_early_end_ends_the_sweep_after_n_scores_in_a_row_below_the_best():
    """The option `early_end` (off by default): the sweep, strongest penalty first, ends once n penalties in
    a row score strictly below the best so far (a tie breaks the run); the heads it fitted are the full
    sweep's, bit for bit, and the rest are 0 with `stop: early end`."""
    data = load_digits()
    X, y = torch.tensor(data.data[:600], dtype=torch.float32), torch.tensor(data.target[:600])
    penalties = [10.0 ** e for e in range(4, -5, -1)]  # strongest first: the sweep's own order
    points = [{"penalty": p, "max_iter": 200, "tol": 1e-4, "rtol": 1e-2, "standardize": True, "early_end": 2}
              for p in penalties]
    script = iter([1.0, 2.0, 2.0, 1.0, 2.0, 1.0, 0.5])  # done at the 7th: 1, 0.5 below 2 in a row
    rated = []

    def rate(W, b):
        rated.append(W.clone())
        return next(script)

    full = linear.fit(X, y, num_classes=10, points=[{**p, "early_end": 0} for p in points], device="cpu")
    ended = linear.fit(X, y, num_classes=10, points=points, device="cpu", rate=rate)
    assert [f["stop"] for f in ended.fits] == ["tol"] * 7 + ["early end"] * 2
    assert torch.equal(ended.weight[:7], full.weight[:7]) and torch.equal(ended.bias[:7], full.bias[:7])
    assert all(torch.equal(w, v) for w, v in zip(rated, full.weight[:7]))  # each head was rated as it ended
    assert not ended.weight[7:].any() and not ended.bias[7:].any()
    assert ended.fits[7] == {"iterations": 0, "evaluations": 0, "converged": False, "stop": "early end"}
    # off: without a rate (the refit on train+val, protocol=reference) or at 0, every point is fitted
    assert all(f["stop"] == "tol" for f in linear.fit(X, y, num_classes=10, points=points, device="cpu").fits)
    with pytest.raises(ValueError, match="early_end ends a sweep over the penalty alone"):
        linear.fit(X, y, num_classes=10, points=[points[0], {**points[1], "tol": 1e-3}], device="cpu", rate=rate)


def test_a_gpu_takes_its_products_in_chunks_of_many_more_rows_than_a_cpu():
    """A CPU keeps each chunk in cache (1024 rows at 2048-d); a GPU pays kernel launches per chunk instead, and
    takes a Food-101-sized X (68,175 x 2048) in two."""
    cpu, gpu = torch.empty(68_175, 2048), torch.empty(68_175, 2048, device="meta")  # meta: any non-CPU device
    assert linear.rows_per_chunk(cpu) == 1024 and linear.rows_per_chunk(gpu) == 65_536
    assert linear.rows_per_chunk(torch.empty(10, 96)) == 5461  # 2^19 values a chunk on a CPU


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("standardize", [True, False])
def test_features_that_never_vary_give_the_class_priors_and_converge(dtype, standardize):
    """A degenerate backbone (every column constant on the fitted rows): W stays exactly 0, which is the
    optimum, so the rule's part relative to ||W|| holds by construction; the bias reaches its closed form,
    softmax(b) = the class frequencies, and each fit converges at once (it used to run to max_iter)."""
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    X = torch.full((100, 4), 3.0, dtype=dtype)
    points = [{"penalty": p, "max_iter": 1000, "tol": 1e-8, "rtol": 1e-2, "standardize": standardize}
              for p in (1e2, 1.0, 1e-4)]
    heads = linear.fit(X, y, num_classes=3, points=points, device="cpu")
    assert all(f["converged"] and f["stop"] == "tol" and f["iterations"] <= 20 for f in heads.fits)
    assert not heads.weight.any()
    priors = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    for b in heads.bias.double():
        torch.testing.assert_close(b - b.mean(), priors - priors.mean(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_the_direction_is_the_textbook_two_loop_over_the_penalised_pairs(mu):
    """`direction` never forms the penalised y = yd + mu s_W (bias column unpenalised); the textbook two
    loops (Nocedal and Wright, algorithm 7.4) over explicitly penalised pairs, the initial matrix the metric
    scaled to the newest pair, give the same -H g; a pair whose penalised curvature s . y is not positive
    is left out by both."""
    gen = torch.Generator().manual_seed(0)
    C, D1 = 4, 7
    raw = []
    for k in range(6):
        s = torch.randn(C, D1, generator=gen, dtype=torch.float64)
        yd = (-s if k == 2 else 2 * s) + 0.1 * torch.randn(C, D1, generator=gen, dtype=torch.float64)
        raw.append((s, yd))
    g = torch.randn(C, D1, generator=gen, dtype=torch.float64)
    M = torch.randn(C * D1, C * D1, generator=gen, dtype=torch.float64)
    M = M @ M.T / (C * D1) + torch.eye(C * D1, dtype=torch.float64)  # a symmetric positive definite metric

    def metric(v):
        return (M @ v.flatten()).view_as(v)

    pairs = []
    for s, yd in raw:
        y = yd.clone()
        y[:, :-1] += mu * s[:, :-1]
        if (s * y).sum() > 0:
            pairs.append((s, y))
    assert len(pairs) == 5  # the reversed pair is left out
    q, alphas = g.clone(), []
    for s, y in reversed(pairs):
        alphas.append((s * q).sum() / (s * y).sum())
        q -= alphas[-1] * y
    s, y = pairs[-1]
    r = metric(q) * (s * y).sum() / (y * metric(y)).sum()
    for (s, y), a in zip(pairs, reversed(alphas)):
        r += (a - (y * r).sum() / (s * y).sum()) * s
    ours = linear.direction(g, [linear.curvature_pair(s, yd) for s, yd in raw], mu, metric)
    torch.testing.assert_close(ours, -r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear.direction(g, [], mu, metric), -metric(g), rtol=0, atol=0)
