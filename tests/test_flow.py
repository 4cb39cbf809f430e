"""The flow method: the codec's round trip, the perturbations' radii, the cache, and the span-form step."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from bench import flows
from bench.methods import flow

SETTINGS = {"dim": 8, "transforms": 2, "hidden": 16, "epochs": 3, "batch_size": 256, "lr": 1e-3, "seed": 0}


@pytest.fixture(scope="module")
def features():
    data = load_digits()
    return F.normalize(torch.tensor(data.data[:400], dtype=torch.float32), dim=1), torch.tensor(data.target[:400])


@pytest.fixture(scope="module")
def codec(features):
    return flows.fit(features[0], **SETTINGS, cache_dir=None)[0]


def test_encode_decode_round_trip(features, codec):
    p = codec.coords(features[0])
    z = codec.encode(p)
    assert z.std() > 0.3  # a real map onto the latent space, not a collapse
    torch.testing.assert_close(codec.decode(z), p, rtol=0, atol=1e-4)
    torch.testing.assert_close(codec.encode(codec.decode(z)), z, rtol=0, atol=1e-4)


def test_principal_directions_are_the_leading_eigenvectors(features):
    """The randomized SVD against the exact eigendecomposition of the covariance, in float32 as real runs."""
    X = features[0]
    mean, basis, scale = flows.principal(X, 8, seed=0)
    ev, vecs = torch.linalg.eigh(torch.cov(X.double().T, correction=0))
    ev, vecs = ev.flip(0)[:8], vecs.flip(1)[:, :8]
    torch.testing.assert_close(mean, X.mean(0))
    torch.testing.assert_close(scale.double(), ev.sqrt(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close((basis.double().T @ vecs).abs(), torch.eye(8, dtype=torch.float64), rtol=0, atol=2e-3)


@pytest.mark.parametrize("transforms", [2, 3])
def test_codec_is_zukos_own_transform_in_its_coordinate_order(features, transforms):
    """Our slices-and-concatenation couplings against zuko's transform (gather and scatter), both ways."""
    codec = flows.fit(features[0], **SETTINGS | {"transforms": transforms, "epochs": 1}, cache_dir=None)[0]
    zuko_transform = codec.flow().transform
    to_flow = torch.argsort(codec.order)  # ours = theirs[:, order], theirs = ours[:, argsort(order)]
    p = codec.coords(features[0])
    torch.testing.assert_close(codec.encode(p), zuko_transform((p / codec.scale)[:, to_flow])[:, codec.order],
                               rtol=1e-5, atol=1e-5)
    z = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(codec.decode(z), zuko_transform.inv(z[:, to_flow])[:, codec.order] * codec.scale,
                               rtol=1e-5, atol=1e-5)
    assert not codec.order.equal(torch.arange(8))  # a real reordering was exercised


def setting(G, mode, norm, steps=3, alpha=0.5):
    eps = torch.tensor([0.05, 0.3, 1.0][:G]).view(-1, 1, 1)
    return {"eps": eps, "alpha": torch.full_like(eps, alpha), "lamda": torch.full_like(eps, 0.1),
            "delta": torch.zeros_like(eps), "adv": torch.full(eps.shape, mode == "adv"), "norm": norm, "steps": steps}


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_adversarial_offsets_stay_in_their_ball_and_raise_the_loss(features, codec, norm):
    X, _ = features
    x, G = X[:64].expand(3, -1, -1), 3
    W = torch.randn(G, 10, X.shape[1], generator=torch.Generator().manual_seed(0))
    xW, p = x @ W.transpose(1, 2), codec.coords(x)
    z = codec.encode(p)
    hp = setting(G, "adv", norm)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    delta = flow.offsets(codec, W, xW, p, z, noise, hp)
    r = flow.radius(hp["eps"], norm, 8)[:, :, 0]
    size = delta.norm(dim=-1) if norm == "l2" else delta.abs().amax(-1)
    assert (size <= r * (1 + 1e-5)).all() and (size > 0.5 * r).all()

    def loss(offset):  # against the head's own predictions, as the attack: plain cross-entropy of the logits
        logits = xW + (codec.decode(z + offset) - p) @ (W @ codec.basis).transpose(1, 2)
        return F.cross_entropy(logits.transpose(1, 2), xW.argmax(-1), reduction="none").mean(1)

    assert (loss(delta) > loss(torch.zeros_like(delta))).all()


def official_flow_adv(x, p, z, W, codec, *, start, eps, alpha, steps, norm):
    """flow-lp's FlowAdvPert.perturb on one head, re-typed: labels = argmax of the classifier on the clean input,
    the start (given, in place of uniform_(-eps, eps)) rescaled into the ball, then `steps` times: the decoded
    input's loss_fn = nn.CrossEntropyLoss(), grad normalised (sign, or / its L2 norm), delta += grad * alpha,
    clipped to the eps ball (clamp, or / max(norm / eps, 1))."""
    labels = (x @ W.T).argmax(-1)

    def ball(d):
        if norm == "linf":
            return d.clamp(-eps, eps)
        return d / torch.max(d.norm(dim=1, keepdim=True) / eps, torch.ones(len(d), 1))

    delta = ball(start * eps)
    for _ in range(steps):
        delta.requires_grad = True
        x_new = x + (codec.decode(z + delta) - p) @ codec.basis.T
        grad = torch.autograd.grad(F.cross_entropy(x_new @ W.T, labels), delta)[0]
        with torch.no_grad():
            grad = grad.sign() if norm == "linf" else grad / grad.norm(dim=1, keepdim=True)
            delta = ball(delta + grad * alpha)
    return delta.detach()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_adversarial_offsets_equal_the_official_loop_at_the_scaled_radius(features, codec, norm):
    X, _ = features
    x = X[:32]
    W = torch.randn(3, 10, X.shape[1], generator=torch.Generator().manual_seed(4))
    p = codec.coords(x)
    z = codec.encode(p)
    hp = setting(3, "adv", norm)
    noise = torch.randn(3, 32, 8, generator=torch.Generator().manual_seed(5))
    xs = x.expand(3, -1, -1)
    got = flow.offsets(codec, W, xs @ W.transpose(1, 2), p.expand(3, -1, -1), z.expand(3, -1, -1), noise, hp)
    for g in range(3):
        r = float(hp["eps"][g]) * ((8 / 3072) ** 0.5 if norm == "l2" else 1.0)
        want = official_flow_adv(x, p, z, W[g], codec, start=2 * torch.special.ndtr(noise[g]) - 1, eps=r,
                                 alpha=0.5 * r, steps=3, norm=norm)
        torch.testing.assert_close(got[g], want, rtol=1e-4, atol=1e-5 * r)


def test_the_radius_keeps_the_official_fraction_of_the_latent_length():
    """L2: r / sqrt(k) = eps / sqrt(3072) (a standard normal latent's length is ~sqrt(d)); L-inf: unscaled."""
    assert flow.radius(1.0, "l2", 3072) == pytest.approx(1.0)
    assert flow.radius(20.0, "l2", 16) == pytest.approx(20.0 * (16 / 3072) ** 0.5)
    z = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    assert flow.radius(20.0, "l2", 16) / z.norm(dim=1).mean() == pytest.approx(20.0 / 3072 ** 0.5, rel=0.03)
    assert flow.radius(0.3, "linf", 16) == 0.3


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_offsets_are_the_official_clipped_normal_draw(codec, norm):
    """FlowRandPert with `ord`: n ~ N(0, r^2) per coordinate, then n / max(||n|| / r, 1) (L2) or clamp (L-inf)."""
    z = torch.zeros(3, 4000, 8)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    hp = setting(3, "rand", norm)
    delta = flow.offsets(codec, None, None, None, z, noise, hp)
    for g in range(3):
        r = float(flow.radius(hp["eps"][g, 0, 0], norm, 8))
        n = r * noise[g]
        if norm == "l2":
            want = n / torch.max(n.norm(dim=1, keepdim=True) / r, torch.ones(len(n), 1))
        else:
            want = n.clamp(-r, r)
        torch.testing.assert_close(delta[g], want)
    if norm == "l2":  # an 8-dimensional draw of std r is almost always longer than r: on the sphere
        torch.testing.assert_close(delta.norm(dim=-1).median(1).values, flow.radius(hp["eps"], "l2", 8).flatten())


def test_zero_coupling_layers_leave_the_pca_whitening_and_the_method_trains(features):
    """flow_linear: z = p / scale exactly (nothing fitted), and the method runs on it."""
    X, y = features
    codec, note = flows.fit(X, **SETTINGS | {"transforms": 0}, cache_dir=None)
    p = codec.coords(X)
    torch.testing.assert_close(codec.encode(p), p / codec.scale, rtol=0, atol=0)
    torch.testing.assert_close(codec.decode(codec.encode(p)), p, rtol=1e-6, atol=1e-7)
    assert note["epochs"] == 0 and note["transforms"] == 0
    point = {"mode": "adv", "eps": 20.0, "norm": "l2", "steps": 3, "alpha": 0.5, "pca_dim": 8, "flow_transforms": 0,
             "flow_hidden": 16, "flow_epochs": 3, "flow_batch_size": 256, "flow_lr": 1e-3, "flow_seed": 0, "seed": 0,
             "lr": 1.6, "momentum": 0.9, "weight_decay": 1e-6, "batch_size": 64, "epochs": 5, "lamda": 0.1,
             "delta": 0.0, "center": True}
    heads = flow.fit(X, y, num_classes=10, points=[point, point | {"mode": "rand"}], device="cpu")
    assert (heads.predict(X) == y).float().mean(1).min() > 0.8


def test_the_flow_cache_hits_on_a_second_run_and_heals(features, tmp_path):
    X, _ = features
    first, note1 = flows.fit(X, **SETTINGS, cache_dir=tmp_path)
    second, note2 = flows.fit(X, **SETTINGS, cache_dir=tmp_path)
    assert not note1["hit"] and note2["hit"] and note1["key"] == note2["key"]
    # the fit's own seconds travel with the entry: a run that loads it reports what the fit cost (the table's cost)
    assert note2["fit_seconds"] == note1["fit_seconds"] and 0 < note1["fit_seconds"] <= note1["seconds"]
    z = torch.randn(5, 8)
    torch.testing.assert_close(second.decode(z), first.decode(z), rtol=0, atol=0)
    assert flows.fit(X[:-1], **SETTINGS, cache_dir=tmp_path)[1]["key"] != note1["key"]  # other features, other key
    assert flows.fit(X, **{**SETTINGS, "epochs": 2}, cache_dir=tmp_path)[1]["key"] != note1["key"]
    path = tmp_path / "flows" / f"{note1['key'][:32]}.pt"
    path.write_bytes(b"damaged")
    healed = flows.fit(X, **SETTINGS, cache_dir=tmp_path)[1]
    assert not healed["hit"] and flows.fit(X, **SETTINGS, cache_dir=tmp_path)[1]["hit"]


@pytest.mark.parametrize("mode", ["rand", "adv"])
def test_the_step_in_principal_coordinates_equals_the_literal_recipe(features, codec, mode):
    """weight_grad = autograd of the loss of x' = x + V (decode(z + delta) - p), x' written out in D dims."""
    X, y = features
    xs, slot = X[:48].view(2, 24, -1), torch.tensor([0, 1, 1])
    W = torch.randn(3, 10, X.shape[1], generator=torch.Generator().manual_seed(3))
    y1 = F.one_hot(y[:48].view(2, 24)[slot], 10).float()
    hp = setting(3, mode, "l2")

    def gens():
        return [torch.Generator().manual_seed(s) for s in (5, 6)]

    P = codec.coords(X)  # setup's once-per-stack coordinates and latents of every fitted example
    cached = {"codec": codec, "gens": gens(), "P": P, "Z": codec.encode(P), "batch": torch.arange(48).view(2, 24)}
    got = flow.weight_grad(W, xs, slot, y1, hp | cached)
    x = xs[slot]
    p, noise = codec.coords(x), flow.draw(gens(), (24, 8), xs)[slot]
    delta = flow.offsets(codec, W, x @ W.transpose(1, 2), p, codec.encode(p), noise, hp)
    x_new = x + (codec.decode(codec.encode(p) + delta) - p) @ codec.basis.T
    Wg = W.clone().requires_grad_(True)
    loss = 0.1 * F.cross_entropy((x_new @ Wg.transpose(1, 2) / 0.1).transpose(1, 2), y1.argmax(-1), reduction="none")
    want = torch.autograd.grad(loss.mean(1).sum(), Wg)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bad_mode_norm_or_mixed_flow_settings_are_one_sentence():
    from bench import UserError

    point = {"mode": "rand", "norm": "l2", "pca_dim": 8, "flow_transforms": 2, "flow_hidden": 16, "flow_epochs": 3,
             "flow_batch_size": 256, "flow_lr": 1e-3, "flow_seed": 0}
    with pytest.raises(UserError, match="mode must be one of rand, adv"):
        flow.check([point | {"mode": "gaussian"}])
    with pytest.raises(UserError, match="one flow serves the whole grid"):
        flow.check([point, point | {"pca_dim": 4}])
