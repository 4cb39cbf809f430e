"""Fine-tuning: the loop learns, the auxiliary losses are the published ones (ISDA's online estimator, A-FAN's
ascent and re-injection, AugSelf's targets), all on timm's test_resnet and digits images, on the CPU."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from bench import backbones
from bench.data import digits
from bench.finetune import afan, augself, isda, loop, views
from bench.finetune.net import Net

ROOT = Path(__file__).resolve().parents[1]
PRE = {"resize": 16, "crop": 16, "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
PARAMS = yaml.safe_load((ROOT / "conf" / "method" / "finetune.yaml").read_text())["params"]
AUGSELF = yaml.safe_load((ROOT / "conf" / "method" / "finetune_augself.yaml").read_text())["params"]
JITTER = AUGSELF["views"]["jitter"]


@pytest.fixture(scope="module")
def task():
    return digits.load(test_per_class=5, val_per_class=5, seed=0)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return backbones.create(name="test_resnet", arch="test_resnet", source="random", init_seed=0, preprocess=PRE,
                            cache_dir=tmp_path_factory.mktemp("cache"))


def point(**changes) -> dict:
    p = copy.deepcopy(PARAMS) | {"seed": 0, "steps": 30, "batch_size": 16, "lr": 0.05, "lr_weight_decay": 0.0}
    for key, value in changes.items():
        if isinstance(value, dict):
            p[key] = {**p[key], **value}
        else:
            p[key] = value
    return p


def net_for(backbone, p, num_classes=10):
    return Net(backbone.model, dim=backbone.model.num_features, num_classes=num_classes, seed=p["seed"],
               afan_stage=p["afan"]["stage"] if p["afan"]["enabled"] else None,
               augself_weights=p["augself"]["weights"] if p["augself"]["enabled"] else None,
               augself_hidden=p["augself"]["hidden"], isda_cov=p["isda"]["cov"] if p["isda"]["enabled"] else None)


def train(backbone, task, p, tmp_path):
    net = net_for(backbone, p)
    cost = loop.train(net, task.splits["train"], point=p, preprocess=PRE, device=torch.device("cpu"),
                      path=tmp_path / "checkpoint.pt", micro_batch=None, num_workers=0, checkpoint_every=1000,
                      compile=False, desc="test")
    return net, cost


def eval_loss(net, backbone, task, n=128):
    images = task.splits["train"].with_transform(backbone.transform)
    x = torch.stack([images[i][0] for i in range(n)])
    y = torch.tensor(task.splits["train"].labels[:n])
    net.eval()
    with torch.no_grad():
        return F.cross_entropy(net(x), y).item()


def test_a_few_steps_lower_the_loss(backbone, task, tmp_path):
    p = point(crop_scale=[0.5, 1.0])  # 8x8 digits: crops of 8% of the image leave too little to learn from
    before = eval_loss(net_for(backbone, p), backbone, task)
    net, cost = train(backbone, task, p, tmp_path)
    after = eval_loss(net, backbone, task)
    assert after < before - 0.3, (before, after)  # measured: 2.31 -> 1.88
    assert cost["steps"] == 30 and cost["images"] == 30 * 16 and cost["finite"]
    assert backbones.tensors_sha256(backbone.model.state_dict()) == backbone.weights_sha256  # a copy trained


def test_gradient_accumulation_gives_the_step_of_the_whole_batch(backbone, task, tmp_path):
    """Micro-batches change BatchNorm's batch statistics, so compare in a network without them at work:
    the head alone on frozen (eval-mode) features sees the same gradient either way."""
    weights = []
    for micro in (None, 4):
        p = point(steps=3)
        net = net_for(backbone, p)
        for m in net.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
                m.train = lambda mode=True, m=m: m  # keep BN in eval mode through net.train()
        loop.train(net, task.splits["train"], point=p, preprocess=PRE, device=torch.device("cpu"),
                   path=tmp_path / f"c{micro}.pt", micro_batch=micro, num_workers=0, checkpoint_every=1000,
                   compile=False, desc="test")
        weights.append(net.head.weight.detach())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-5)


def test_every_auxiliary_loss_at_once_trains(backbone, task, tmp_path):
    p = point(steps=4, isda={"enabled": True, "cov": "full"}, afan={"enabled": True, "reinject": 2},
              augself={"enabled": True}, views=AUGSELF["views"])
    net, cost = train(backbone, task, p, tmp_path)
    assert cost["finite"] and cost["images"] == 4 * 16 * 2  # two views per image
    assert net.estimator.count.sum() == 4 * 16 * 2 and set(net.predictors) == {"crop", "color"}


# ---- ISDA --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cov", ["full", "diag"])
def test_isda_online_estimator_is_the_covariance_of_everything_seen(cov, dtype):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(300, 6, generator=gen, dtype=dtype) * torch.arange(1, 7, dtype=dtype) + 3
    y = torch.randint(0, 4, (300,), generator=gen)
    y[:5] = 3  # a class alone in the first batch
    est = isda.Estimator(4, 6, cov).to(dtype)
    for start in range(0, 300, 37):
        est.update(X[start:start + 37], y[start:start + 37])
    for c in range(4):
        Xc = X[y == c]
        full = torch.cov(Xc.T, correction=0)  # the biased covariance, as the official estimator's
        expected = full.diagonal() if cov == "diag" else full
        tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
        torch.testing.assert_close(est.cov[c], expected, **tol)
        torch.testing.assert_close(est.mean[c], Xc.mean(0), **tol)
        assert est.count[c] == len(Xc)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_isda_logits_add_the_quadratic_form_of_the_class_covariance(cov):
    gen = torch.Generator().manual_seed(1)
    W, y = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.tensor([0, 3, 3, 1])
    A = torch.randn(5, 4, 4, generator=gen, dtype=torch.float64)
    S = A @ A.transpose(1, 2)
    S = S.diagonal(dim1=1, dim2=2) if cov == "diag" else S
    got = isda.spread(W, S, y)
    for n in range(4):
        Sy = torch.diag(S[y[n]]) if cov == "diag" else S[y[n]]
        for j in range(5):
            d = W[j] - W[y[n]]
            torch.testing.assert_close(got[n, j], d @ Sy @ d)
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    expected = F.cross_entropy(logits + 0.5 * 0.3 * got, y)
    torch.testing.assert_close(isda.loss(logits, W, S, y, 0.3), expected)


def test_isda_update_and_loss_run_in_float32_inside_bf16_autocast():
    """As loop.micro_loss calls them under bfloat16 autocast (CPU autocast here, a GPU's in real runs): the
    estimator and the quadratic term equal their float32 values; without the guard bf16 is ~1e-3 off."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 32, generator=gen) * 3 + 1
    y = torch.arange(64) % 4
    W = torch.randn(4, 32, generator=gen, requires_grad=True)
    logits = feats @ W.detach().T
    plain, mixed = isda.Estimator(4, 32, "full"), isda.Estimator(4, 32, "full")
    plain.update(feats, y)
    want = isda.loss(logits, W, plain.cov, y, 0.5)
    (want_grad,) = torch.autograd.grad(want, W)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed.update(feats, y)
        got = isda.loss(logits, W, mixed.cov, y, 0.5)
        unguarded = isda.spread(W.detach(), plain.cov, y)  # the quadratic term without loss()'s guard
    (got_grad,) = torch.autograd.grad(got, W)
    assert got.dtype == torch.float32 and mixed.cov.dtype == torch.float32
    torch.testing.assert_close(mixed.cov, plain.cov, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-6)
    exact = isda.spread(W.detach(), plain.cov, y)
    assert ((unguarded - exact).abs().max() / exact.abs().max()) > 1e-4  # what the guard prevents


def test_isda_auto_covariance_is_full_where_it_fits():
    assert isda.resolve("auto", num_classes=10, dim=512) == "full"
    assert isda.resolve("auto", num_classes=100, dim=2048) == "diag"  # 100 x 2048 x 2048 > 2^28
    assert isda.Estimator(3, 4, "auto").cov.shape == (3, 4, 4)
    assert isda.Estimator(3, 4, "diag").cov.shape == (3, 4)


def test_isda_lambda_ramps_per_epoch():
    # 100 images, batch 10, 50 steps: 5 epochs; lambda0 * epoch / epochs, epoch counted from 0
    assert [isda.ratio(lambda0=7.5, step=s, steps=50, batch_size=10, n=100) for s in (0, 9, 10, 49)] == \
        [0.0, 0.0, 1.5, 6.0]


# ---- A-FAN -------------------------------------------------------------------------------------------------


def test_afan_split_is_the_backbone(backbone):
    front, back = afan.split(backbone.model, 2)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(front(x)), backbone.model(x))
    with pytest.raises(Exception, match="intermediate stage"):
        afan.split(backbone.model, 4)


def test_afan_ascent_does_not_lower_the_loss(backbone):
    torch.manual_seed(0)
    model = copy.deepcopy(backbone.model).eval()
    front, back = afan.split(model, 2)
    head = torch.nn.Linear(model.num_features, 10)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    h = front(x).detach()

    def loss(z):
        return F.cross_entropy(head(back(z)), y).item()

    previous = loss(h)
    for steps in (1, 2, 5):
        adv = afan.ascend(h, y, lambda z: head(back(z)), steps=steps, gamma=0.01, eps=None)
        assert loss(adv) >= previous - 1e-6
        previous = loss(adv)
    assert previous > loss(h)
    clipped = afan.ascend(h, y, lambda z: head(back(z)), steps=5, gamma=0.01, eps=0.015)
    assert (clipped - h).abs().max() <= 0.015 + 1e-6


def test_afan_reinjection_matches_a_hand_computation():
    # one example, 2 channels, 1 x 2 positions: moments over the two channels at each position
    h = torch.tensor([[[[1.0, 0.0]], [[3.0, 4.0]]]])
    adv = torch.tensor([[[[2.0, 1.0]], [[2.0, 5.0]]]])
    # position 0: h (1, 3) mean 2 std 1; adv (2, 2) mean 2 std 0 -> 0 * (h - 2) / 1 + 2 = (2, 2)
    # position 1: h (0, 4) mean 2 std 2; adv (1, 5) mean 3 std 2 -> 2 * (h - 2) / 2 + 3 = (1, 5)
    expected = torch.tensor([[[[2.0, 1.0]], [[2.0, 5.0]]]])
    torch.testing.assert_close(afan.reinject(h, adv, eps=0.0), expected)


@pytest.mark.parametrize("n", [0, 4])
def test_afan_loss_equals_the_official_training_step(backbone, n):
    """The classification code's 0.5 (clean + adversarial) at n 0; Detection/py/train_sat_mix.py's form at n 4:
    get_sample_points(fm, fm_adv, 5), mix_feature of points 1..4, 0.2 x (clean + the four), re-typed."""
    from reference import official_mix_feature, official_sample_points

    torch.manual_seed(0)
    model = copy.deepcopy(backbone.model).eval()
    front, back = afan.split(model, 1)
    head = torch.nn.Linear(model.num_features, 10)
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6)
    h = front(x)
    clean = F.cross_entropy(head(back(h)), y)
    got = afan.combined_loss(clean, h, y, back=back, head=head, steps=2, gamma=0.05, eps=None, reinject_strengths=n)
    fm = h.detach()
    fm_adv = afan.ascend(fm, y, lambda z: head(back(z)), steps=2, gamma=0.05, eps=None)
    if n == 0:
        want = 0.5 * (clean + F.cross_entropy(head(back(fm_adv)), y))
    else:
        points = official_sample_points(fm, fm_adv, 5)
        want = 0.2 * (clean + sum(F.cross_entropy(head(back(official_mix_feature(fm, p))), y) for p in points[1:]))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---- AugSelf -----------------------------------------------------------------------------------------------


def coordinates(size=96):
    """An image whose red channel is the row and green channel the column (0..255 over the image)."""
    from PIL import Image

    ramp = torch.linspace(0, 255, size)
    rgb = torch.stack([ramp[:, None].expand(size, size), ramp[None, :].expand(size, size),
                       torch.full((size, size), 128.0)], -1)
    return Image.fromarray(rgb.round().byte().numpy(), mode="RGB")


def test_augself_targets_are_the_parameters_the_views_were_made_with():
    image = coordinates()
    made = views.Views([(image, 0)], views=2, size=32, interpolation="bicubic", mean=None, std=None,
                       scale=(0.2, 1.0), jitter=None)
    flips = set()
    for seed in range(12):
        x, params, _ = made[(0, seed)]
        measured, first_flipped = [], None
        for v in range(2):
            red, green = x[v, 0] * 255 / 255, x[v, 1] * 255 / 255  # fractions of the image
            flipped = bool(green[:, 0].mean() > green[:, -1].mean())
            first_flipped = flipped if v == 0 else first_flipped
            flips.add(flipped)
            cx = green.mean().item()  # the crop's centre in the image (a flip does not move it)
            # the official convention: both centres in view 1's frame, mirrored by view 1's flip
            measured.append(torch.tensor([red.mean().item(), 1 - cx if first_flipped else cx,
                                          *(params[v, 2:4].tolist())]))
            assert params[v, 4].item() == float(flipped)
            # the crop's height and width show in the ramps' spans (one pixel of the image less)
            assert abs((red[-1].mean() - red[0].mean()).item() - params[v, 2].item()) < 0.06
        got = augself.targets(params[:1], params[1:], JITTER)["crop"][0]
        torch.testing.assert_close(got, measured[0] - measured[1], atol=0.02, rtol=0)
    assert flips == {True, False}


def test_augself_color_targets_are_the_sampled_factors_over_their_range():
    from PIL import Image

    gray = Image.new("RGB", (8, 8), (100, 100, 100))
    jitter = {"brightness": 0.4, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "p": 1.0}
    made = views.Views([(gray, 0)], views=2, size=8, interpolation="bicubic", mean=None, std=None,
                       scale=(0.5, 1.0), jitter=jitter)
    x, params, _ = made[(0, 3)]
    applied = x.mean((1, 2, 3)) / (100 / 255)  # brightness multiplies a flat gray image
    torch.testing.assert_close(applied, params[:, 5], atol=0.01, rtol=0)
    target = augself.targets(params[:1], params[1:], {**jitter, "contrast": 0.4, "saturation": 0.4, "hue": 0.1})
    torch.testing.assert_close(target["color"][0], torch.tensor([(applied[0] - applied[1]) / 0.8, 0, 0, 0]),
                               atol=0.02, rtol=0)
    off = views.Views([(gray, 0)], views=1, size=8, interpolation="bicubic", mean=None, std=None,
                      scale=(0.5, 1.0), jitter={**jitter, "p": 0.0})
    assert off[(0, 3)][1][0, 5:].tolist() == [1.0, 1.0, 1.0, 0.0]  # not applied: no colour change


def official_extract_diff(crop1, crop2, f1, color1, color2):
    """hankook/AugSelf transforms.extract_diff, re-typed for crop and color: crops [B, 4] (i/H, j/W, h/H, w/W),
    f1 the FIRST argument's flips (bool [B]), colors the already-scaled _extract_w rows [B, 4]."""
    center1 = crop1[:, :2] + crop1[:, 2:] / 2
    center2 = crop2[:, :2] + crop2[:, 2:] / 2
    center1[f1, 1] = 1 - center1[f1, 1]
    center2[f1, 1] = 1 - center2[f1, 1]
    return {"crop": torch.cat([center1 - center2, crop1[:, 2:] - crop2[:, 2:]], 1), "color": color1 - color2}


def test_augself_loss_is_the_official_objective_on_the_official_targets():
    """SSObjective(symmetric) over prepare_training_batch's diff1 = extract_diff(t1, t2, w1, w2) and
    diff2 = extract_diff(t2, t1, w2, w1): each direction's centres mirrored by its first view's flip."""
    torch.manual_seed(0)
    heads = augself.heads(6, weights={"crop": 0.5, "color": 0.25}, hidden=8).eval()
    z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
    p1, p2 = torch.rand(8, 9), torch.rand(8, 9)
    p1[:, 4], p2[:, 4] = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0.0]), torch.tensor([0, 0, 1, 1, 1, 0, 1, 0.0])
    applied = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)  # jitter not applied: factors 1, 1, 1, 0
    p2[~applied, 5:] = torch.tensor([1.0, 1.0, 1.0, 0.0])

    def color_w(p):  # _extract_w: (factor - 1) / range width, hue / its width; zeros where not applied
        return torch.stack([(p[:, 5] - 1) / 0.8, (p[:, 6] - 1) / 0.8, (p[:, 7] - 1) / 0.8, p[:, 8] / 0.2], 1)

    flip1, flip2 = p1[:, 4] > 0.5, p2[:, 4] > 0.5
    d1 = official_extract_diff(p1[:, :4].clone(), p2[:, :4].clone(), flip1, color_w(p1), color_w(p2))
    d2 = official_extract_diff(p2[:, :4].clone(), p1[:, :4].clone(), flip2, color_w(p2), color_w(p1))
    z = torch.cat([torch.cat([z1, z2], 1), torch.cat([z2, z1], 1)], 0)
    want = sum(w * F.mse_loss(torch.tanh(heads[k](z)), torch.cat([d1[k], d2[k]], 0))
               for k, w in (("crop", 0.5), ("color", 0.25)))
    got = augself.loss(heads, z1, z2, p1, p2, weights={"crop": 0.5, "color": 0.25}, jitter=JITTER)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(d2["crop"], -d1["crop"])  # differing flips: the reverse is not the negation
    assert [m.out_features for m in heads["crop"] if isinstance(m, torch.nn.Linear)] == [8, 8, 4]


def test_augself_views_gray_and_blur_as_its_pretraining():
    from PIL import Image

    assert [views.blur_kernel(s) for s in (224, 96, 64)] == [23, 9, 7]  # the official 23 at 224, 9 at 96
    image = coordinates(32)
    gray = views.Views([(image, 0)], views=1, size=32, interpolation="bicubic", mean=None, std=None,
                       scale=(1.0, 1.0), jitter=None, grayscale=1.0)[(0, 0)][0][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    flat = Image.new("RGB", (32, 32), (0, 0, 0))
    flat.putpixel((16, 16), (255, 255, 255))
    blurred = views.Views([(flat, 0)], views=1, size=32, interpolation="bicubic", mean=None, std=None,
                          scale=(1.0, 1.0), jitter=None, blur=1.0)
    sharp = views.Views([(flat, 0)], views=1, size=32, interpolation="bicubic", mean=None, std=None,
                        scale=(1.0, 1.0), jitter=None)
    assert blurred[(0, 1)][0].max() < 0.5 * sharp[(0, 1)][0].max()  # the dot is spread out


def test_twoview_is_augself_without_its_loss(backbone, task, tmp_path):
    """finetune_twoview: the same two views per image in the cross-entropy, no predictors."""
    p = point(steps=3, views=AUGSELF["views"], crop_scale=AUGSELF["crop_scale"])
    net, cost = train(backbone, task, p, tmp_path)
    assert net.predictors is None and cost["finite"] and cost["images"] == 3 * 16 * 2
    assert loop.recipe(p, PRE) == loop.recipe(p | {"augself": {**p["augself"], "enabled": True}}, PRE)


def test_views_depend_only_on_their_seed(task):
    made = views.Views(task.splits["train"], views=1, size=16, interpolation="bicubic", mean=None, std=None,
                       scale=(0.08, 1.0), jitter=None)
    a, b = made[(3, 42)], made[(3, 42)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    steps = views.Steps(10, batch_size=4, micro_batch=2, steps=6, start=0, seed=0)
    later = views.Steps(10, batch_size=4, micro_batch=2, steps=6, start=3, seed=0)
    assert list(steps)[6:] == list(later)  # resuming at step 3 gives the batches of steps 3..5
    assert sorted(i for batch in list(steps)[:5] for i, _ in batch) == list(range(10))  # epoch 0: a permutation


@pytest.mark.parametrize("change,message", [
    ({"params": {"steps": 0}}, "method.params.steps must be a positive integer"),
    ({"grid": {"lr": [0.0, 0.1]}}, "learning rates must be positive"),
    ({"settings": {"micro_batch": -4}}, "finetune.micro_batch must be a positive integer"),
    ({"params": {"isda": {"enabled": True, "cov": "lowrank"}}}, "method.params.isda.cov must be one of"),
    ({"params": {"augself": {**PARAMS["augself"], "enabled": True}}}, "method.params.augself needs two jittered views"),
    ({"params": {"afan": {**PARAMS["afan"], "enabled": True, "reinject": -1}}}, "afan.reinject must be a whole number"),
])
def test_bad_settings_are_one_sentence_before_training(change, message):
    from bench import UserError, finetune

    params = {**PARAMS, **change.get("params", {})}
    settings = {"micro_batch": None, "checkpoint_every": 500, "eval_batch_size": 128, **change.get("settings", {})}
    with pytest.raises(UserError, match=message):
        finetune.check(params, change.get("grid", {"lr": [0.1]}), settings)


def test_an_unwritable_checkpoint_folder_is_one_sentence(tmp_path):
    from bench import UserError
    from bench.finetune import checkpoint

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write fine-tuning checkpoint"):
        checkpoint.save(blocked / "checkpoint.pt", {"step": 1})
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"half a checkpoint")
    assert checkpoint.load(damaged) is None and not damaged.exists()  # trained again, not trusted
