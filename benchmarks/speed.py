"""DESIGN section 9 targets, each measured side by side in one run and printed as one line:

    python benchmarks/speed.py                 # every target (DESIGN section 9 and issue 7), in turn
    python benchmarks/speed.py --only linear   # one target; --help for the sizes

Timings on a shared machine are noisy: the two sides of each comparison are run alternately
(A B A B ...) and the median of `--repeats` runs of each is reported. Nothing here is asserted.
Hyperparameters come from the method configs (conf/method/*.yaml), as a user's run would get them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench import backbones, config, features
from bench.data import ImageList, read_rgb
from bench.methods import NOT_FITTED, Heads, afan, flow, isda, linear, noise, sea, sgd
from bench.protocol import grid_points

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("speed")


def method_config(name: str) -> tuple[dict, dict]:
    """(params, grid) of conf/method/<name>.yaml, with its `defaults` (a base method) applied."""
    method = config.compose([f"method={name}"])["method"]
    return method["params"], method["grid"]


def synthetic_features(n: int, *, dim: int, num_classes: int, noise: float, seed: int = 0):
    """Post-ReLU-like features [n, dim] float32 and labels: class means in a 256-d latent space plus
    noise, mapped to `dim` by a random linear layer, shifted and rectified (about 55% zeros, correlated
    dimensions, one scale per dimension) -- the structure a linear probe sees in real CNN features."""
    gen = torch.Generator().manual_seed(seed)
    latent = 256
    means = torch.randn(num_classes, latent, generator=gen)
    mix = torch.randn(latent, dim, generator=gen) / latent ** 0.5
    shift = -0.5 + 0.2 * torch.randn(dim, generator=gen)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    X = torch.empty(n, dim)
    for start in range(0, n, 8192):  # in chunks: no [n, dim] temporaries beside X
        part = y[start:start + 8192]
        h = means[part] + noise * torch.randn(len(part), latent, generator=gen)
        X[start:start + len(part)] = torch.relu(h @ mix + shift + 0.5 * torch.randn(len(part), dim, generator=gen))
    return X, y


def alternate(*runs, repeats: int) -> list[list[float]]:
    """Seconds of each zero-argument callable, run alternately `repeats` times: [[a1, a2 ..], [b1, ..]]."""
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, out in zip(runs, times):
            start = time.perf_counter()
            run()
            out.append(time.perf_counter() - start)
    return times


def verdict(name: str, compared: str, figures: str, ratio: float, target: str, ok: bool) -> None:
    print(f"[{name}] {compared}: {figures}; ratio {ratio:.2f}x, target {target}: {'PASS' if ok else 'MISS'}",
          flush=True)


def accuracy(heads, X, y) -> list[float]:
    return [100 * (p == y).double().mean().item() for p in heads.predict(X)]


# ---------------------------------------------------------------------------------------------- linear probe


def mnist_like(n: int, *, num_classes: int = 10, seed: int = 0):
    """Raw-pixel-like features [n, 784] in [0, 1]: per class a smooth 20x20 template, shifted by up to 2 pixels
    in a 28x28 frame, with smooth stroke noise and clipping (the 2-pixel border is 0 on every image: constant
    columns; neighbouring pixels correlated; about 70% zeros), as MNIST's pixels."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 1, 6, 6, generator=gen)
    templates = torch.nn.functional.interpolate(coarse, size=(20, 20), mode="bilinear", align_corners=False)[:, 0]
    y = torch.randint(0, num_classes, (n,), generator=gen)
    X = torch.zeros(n, 28, 28)
    for start in range(0, n, 4096):
        part = y[start:start + 4096]
        strokes = torch.nn.functional.interpolate(torch.rand(len(part), 1, 5, 5, generator=gen), size=(20, 20),
                                                  mode="bilinear", align_corners=False)[:, 0]
        image = (templates[part] + 0.9 * (strokes - 0.5) + 0.15 * torch.randn(len(part), 20, 20, generator=gen)
                 - 0.45).clamp(0, 1).mul(1.6).clamp(0, 1)
        shifts = torch.randint(0, 5, (2, len(part)), generator=gen)
        for i in range(len(part)):
            r, c = 2 + int(shifts[0, i]), 2 + int(shifts[1, i])
            X[start + i, r:r + 20, c:c + 20] = image[i]
    return X.flatten(1), y


def collinear(n: int, *, dim: int = 96, num_classes: int = 10, seed: int = 0, latent: int = 12):
    """Random-init-CNN-like features [n, dim]: one positive direction scaled per example (mean cosine between
    examples about 0.98) plus a rank-`latent` class signal and 1% noise, rectified: after standardising, one
    eigenvalue of the correlation matrix near 60 and most near 2e-5 (nearly collinear columns)."""
    gen = torch.Generator().manual_seed(seed)
    means, mix = torch.randn(num_classes, latent, generator=gen), torch.randn(latent, dim, generator=gen)
    common = 1 + torch.rand(dim, generator=gen)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    z = 0.35 * means[y] + torch.randn(n, latent, generator=gen)
    scale = 1 + 0.2 * torch.randn(n, 1, generator=gen)
    return torch.relu(5 * scale * common + 0.3 * z @ mix + 0.01 * torch.randn(n, dim, generator=gen)), y


def sklearn_sweep(Xtr, ytr, Xte, penalties, *, max_iter: int, tol: float, early_end: int = 0,
                  yval=None) -> tuple[dict[float, np.ndarray], int]:
    """ssl-transfer's probe: standardised features, one warm-started LogisticRegression (L-BFGS) refitted
    for each C = 1 / penalty; returns the held-out predictions per penalty and its L-BFGS iterations in all.
    With `early_end` n > 0, the sweep ends by our option's rule (`linear.EarlyEnd`) on the val accuracy of
    the first len(yval) held-out rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(Xtr)
    A, B = scaler.transform(Xtr), scaler.transform(Xte)
    est = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
    pred, iterations, ended = {}, 0, linear.EarlyEnd(early_end)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter; the same budget applies to ours
        for penalty in sorted(penalties, reverse=True):  # strong -> weak, as ours
            pred[penalty] = est.set_params(C=1 / penalty).fit(A, ytr).predict(B)
            iterations += int(est.n_iter_.max())
            if early_end:
                ended.add(100 * float((pred[penalty][:len(yval)] == yval).mean()))
                if ended.done:
                    break
    return pred, iterations


def peak_rss_above(run) -> int:
    """Bytes of resident memory `run()` peaked at above the resident memory before it (Linux: the peak is
    reset first through /proc/self/clear_refs and read from VmHWM; elsewhere -1)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/statm") as f:
            before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        run()
        return -1
    run()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")) - before


def cold_gap(Xtr, ytr, heads, points, index: list[int], num_classes: int) -> tuple[float, float]:
    """The largest relative gaps of the sweep's heads at the points `index` to their optima fitted alone from
    zero in float64 to rtol 1e-3 and tol 1e-8 (10 and 1e4 times tighter than the YAML's): (objective (f - f*) / f*,
    weights ||W - W*|| / ||W*||), both on the standardised features the objective is defined on; nan where a
    cold fit did not converge within 5000 iterations."""
    X = Xtr.double()
    mean, scale, _ = linear.moments(X, True)
    Xs, Y1 = (X - mean) / scale, torch.nn.functional.one_hot(ytr, num_classes).double()
    worst_f = worst_w = 0.0
    for i in index:
        point = {**points[i], "max_iter": 5000, "tol": 1e-8, "rtol": 1e-3}
        cold = linear.fit(Xtr, ytr, num_classes=num_classes, points=[point], device="cpu", float64_max=math.inf)
        if not cold.fits[0]["converged"]:
            return math.nan, math.nan
        values = []
        for W, b in ((heads.weight[i].double(), heads.bias[i].double()), (cold.weight[0], cold.bias[0])):
            Ws, bs = W * scale, b + W @ mean  # back to the standardised space
            values.append((linear.objective(Ws, bs, Xs, Y1, points[i]["penalty"])[0].item(), Ws))
        (f, W), (f_star, W_star) = values
        worst_f = max(worst_f, (f - f_star) / f_star)
        worst_w = max(worst_w, float((W - W_star).norm() / W_star.norm()))
    return worst_f, worst_w


LINEAR_SHAPES = {  # name: (train rows, features, classes, generator, what it stands for)
    "a": (25000, 2048, 101, "synthetic_features", "Food-101-shaped CNN features"),
    "b": (7200, 784, 10, "mnist_like", "MNIST-like raw pixels"),
    "c": (45000, 96, 10, "collinear", "random-init-CNN-like, nearly collinear"),
}


def shape_data(shape: str, args):
    rows, dim, classes, maker, _ = LINEAR_SHAPES[shape]
    rows = max(200, int(rows * args.linear_scale))
    held_out = rows // 5
    if maker == "synthetic_features":
        X, y = synthetic_features(rows + 2 * held_out, dim=dim, num_classes=classes, noise=4.0, seed=1)
    else:
        X, y = globals()[maker](rows + 2 * held_out, num_classes=classes, seed=1)
    return X[:rows], y[:rows], X[rows:], y[rows:], held_out, classes


def bench_linear(args) -> None:
    params, grid = method_config("linear")
    penalties = grid["penalty"]
    points = [{**params, "penalty": p} for p in penalties]
    print(f"linear: the YAML's {len(points)} penalties in [{min(penalties):g}, {max(penalties):g}], max_iter "
          f"{params['max_iter']}, tol {params['tol']}, rtol {params['rtol']} (sklearn: tol only), standardize "
          f"{params['standardize']}; shapes at {args.linear_scale:g} of their rows; val and test a fifth of "
          "train each", flush=True)
    for shape in args.linear_shapes:
        bench_linear_shape(shape, points, penalties, params, args)


def bench_linear_shape(shape, points, penalties, params, args) -> None:
    Xtr, ytr, Xho, yho, held_out, classes = shape_data(shape, args)
    out, memory = {}, []

    def ours():
        def run():
            out["ours"] = linear.fit(Xtr, ytr, num_classes=classes, points=points, device="cpu")
        memory.append(peak_rss_above(run))

    def theirs():
        out["sklearn"], out["sk_iterations"] = sklearn_sweep(Xtr.numpy(), ytr.numpy(), Xho.numpy(), penalties,
                                                             max_iter=params["max_iter"], tol=params["tol"])

    t_ours, t_sk = map(statistics.median, alternate(ours, theirs, repeats=args.linear_repeats))
    test, pick = picks(out, penalties, Xho, yho, held_out)
    fits = out["ours"].fits
    ends = ", ".join(f"{n} {stop}" for stop, n in Counter(f["stop"] for f in fits).items())
    shown = ", ".join(f"{n} in {c}" for c, n in Counter(f.get("certificate", "?") for f in fits).items())
    every = len(penalties) - 1
    index = sorted({round(every * k / max(1, args.linear_gap_points - 1)) for k in range(args.linear_gap_points)})
    gap_f, gap_w = cold_gap(Xtr, ytr, out["ours"], points, index, classes) if index and args.linear_gap_points \
        else (float("nan"), float("nan"))
    features_bytes = Xtr.numel() * Xtr.element_size()
    name = f"linear-{shape}"
    print(f"{name}: {LINEAR_SHAPES[shape][4]}, train {tuple(Xtr.shape)} float32, {classes} classes; our fits "
          f"ended: {ends} (the rule shown with {shown} products); per sweep: ours {sum(f['iterations'] for f in fits)}"
          f" iterations, {sum(f.get('evaluations', 0) for f in fits) or '?'} objective evaluations; sklearn "
          f"{out['sk_iterations']} L-BFGS iterations; largest gap to the cold-started optimum at penalties "
          f"{[f'{penalties[i]:.3g}' for i in index]}: objective {gap_f:.2e} relative, weights {gap_w:.2e} relative; "
          f"our peak memory above the process's before the fit {max(memory) / features_bytes:.2f}x the train "
          f"features ({features_bytes / 2 ** 20:.0f} MiB)")
    print(f"{name}: picked on val: ours penalty {penalties[pick['ours']]:.3g} (test {test['ours'][pick['ours']]:.2f}%), "
          f"sklearn penalty {penalties[pick['sklearn']]:.3g} (test {test['sklearn'][pick['sklearn']]:.2f}%)")
    gap = abs(test["ours"][pick["ours"]] - test["sklearn"][pick["sklearn"]]).item()
    converged = all(f["converged"] for f in fits)
    verdict(name, "45-point probe sweep, bench.methods.linear.fit vs sklearn LogisticRegression(lbfgs, "
            "warm_start=True) over C = 1/penalty", f"{t_ours:.1f} s vs {t_sk:.1f} s (median of "
            f"{args.linear_repeats}), test accuracy of the val pick {test['ours'][pick['ours']]:.2f}% vs "
            f"{test['sklearn'][pick['sklearn']]:.2f}%, every fit converged: {converged}", t_sk / t_ours,
            ">= 3x (CPU), same pick or within 0.3 points, every fit converged",
            t_sk / t_ours >= 3 and (pick["ours"] == pick["sklearn"] or gap <= 0.3) and converged)
    if args.linear_early_end:
        bench_early_end(name, Xtr, ytr, Xho, yho, held_out, classes, points, penalties, params, args)


def picks(out, penalties, Xho, yho, held_out) -> tuple[dict, dict]:
    """The test accuracy [penalties] of both sweeps' heads (`out["ours"]`: Heads, `out["sklearn"]`:
    held-out predictions by penalty; val the first `held_out` rows), and each val pick as the protocol
    makes it: the first maximum in grid order (ties go to the weaker penalty), over the penalties fitted."""
    missing = np.full(len(yho), -1)
    correct = {"ours": out["ours"].predict(Xho).eq(yho).double(),  # [penalties, held-out rows]
               "sklearn": torch.tensor(np.stack([out["sklearn"].get(p, missing) for p in penalties])).eq(yho).double()}
    fitted = {"ours": torch.tensor([f["stop"] != NOT_FITTED for f in out["ours"].fits]),
              "sklearn": torch.tensor([p in out["sklearn"] for p in penalties])}
    val = {k: 100 * v[:, :held_out].mean(1) for k, v in correct.items()}
    test = {k: 100 * v[:, held_out:].mean(1) for k, v in correct.items()}
    pick = {k: int(v.masked_fill(~fitted[k], -math.inf).argmax()) for k, v in val.items()}
    return test, pick


def bench_early_end(name, Xtr, ytr, Xho, yho, held_out, classes, points, penalties, params, args) -> None:
    """The option `early_end` (off by default) on both sweeps, by the same rule on the same val rows: times,
    penalties fitted and the picks, beside the full sweeps' above."""
    n, out = args.linear_early_end, {}
    ended = [{**p, "early_end": n} for p in points]

    def rate(W, b):  # a head's val accuracy, as the protocol's scorer
        return 100 * Heads(W[None], b[None]).predict(Xho[:held_out])[0].eq(yho[:held_out]).double().mean().item()

    def ours():
        out["ours"] = linear.fit(Xtr, ytr, num_classes=classes, points=ended, device="cpu", rate=rate)

    def theirs():
        out["sklearn"], _ = sklearn_sweep(Xtr.numpy(), ytr.numpy(), Xho.numpy(), penalties, max_iter=params["max_iter"],
                                          tol=params["tol"], early_end=n, yval=yho[:held_out].numpy())

    t_ours, t_sk = map(statistics.median, alternate(ours, theirs, repeats=args.linear_repeats))
    test, pick = picks(out, penalties, Xho, yho, held_out)
    fitted = [f for f in out["ours"].fits if f["stop"] != NOT_FITTED]
    print(f"{name}: with early_end={n} (an option, off by default; both sweeps end by the same rule on val): "
          f"{t_ours:.1f} s vs {t_sk:.1f} s, {t_sk / t_ours:.2f}x; penalties fitted: ours {len(fitted)}, sklearn "
          f"{len(out['sklearn'])} of {len(penalties)}; every fitted fit converged: "
          f"{all(f['converged'] for f in fitted)}; picks: "
          + ", ".join(f"{k} penalty {penalties[pick[k]]:.3g} (test {test[k][pick[k]]:.2f}%)" for k in ("ours", "sklearn")))


# ---------------------------------------------------------------------------------------------------- SeA


def reference_module():
    """tests/reference.py: the per-batch loop (nn.Linear + torch.optim.SGD + autograd) the tests check us against."""
    spec = importlib.util.spec_from_file_location("reference", ROOT / "tests" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_sea(args) -> None:
    params, _ = method_config("sea")
    params = {**params, "epochs": args.sea_epochs, "seed": 0}
    etas, lrs = [0.05, 0.1, 0.2, 0.4, 0.8], [0.4, 0.8, 1.6, 3.2]
    points = [{**params, "eta": e, "lr": lr} for e in etas for lr in lrs]
    n = args.sea_rows + args.sea_test_rows
    X, y = synthetic_features(n, dim=args.dim, num_classes=args.sea_classes, noise=4.0, seed=2)
    Xtr, ytr, Xte, yte = X[:args.sea_rows], y[:args.sea_rows], X[args.sea_rows:], y[args.sea_rows:]
    one = points.index({**params, "eta": params["eta"], "lr": params["lr"]})  # the YAML's default point
    print(f"sea: train {tuple(Xtr.shape)} float32, held-out {tuple(Xte.shape)}, {args.sea_classes} classes, "
          f"grid eta {etas} x lr {lrs} (20 points, seed 0), {params['epochs']} epochs, batch "
          f"{params['batch_size']}; reference: tests/reference.py reference_train at the default point "
          f"eta {params['eta']}, lr {params['lr']}", flush=True)
    reference = reference_module()
    ref_kwargs = {k: params[k] for k in ("seed", "lr", "momentum", "weight_decay", "batch_size", "epochs", "lamda",
                                         "delta", "center", "eta", "alpha")}
    out = {}

    def grid():
        out["grid"] = sea.fit(Xtr, ytr, num_classes=args.sea_classes, points=points, device="cpu")

    def ref():
        out["ref"] = reference.reference_train(Xtr, ytr, num_classes=args.sea_classes, **ref_kwargs)

    t_grid, t_ref = map(statistics.median, alternate(grid, ref, repeats=args.repeats))
    acc_grid = accuracy(out["grid"], Xte, yte)
    W, shift = out["ref"]
    acc_ref = 100 * ((Xte - shift) @ W.T).argmax(1).eq(yte).double().mean().item()
    gap = abs(acc_grid[one] - acc_ref)
    per_point = t_grid / len(points)
    print(f"sea: held-out accuracy over the grid {min(acc_grid):.2f}..{max(acc_grid):.2f}%; at the default point "
          f"ours {acc_grid[one]:.2f}%, reference {acc_ref:.2f}%")
    verdict("sea", "cost per grid point of a 20-point bench.methods.sea.fit grid vs one reference_train run",
            f"{per_point:.2f} s ({t_grid:.1f} s / 20) vs {t_ref:.2f} s (median of {args.repeats}), held-out "
            f"accuracy {acc_grid[one]:.2f}% vs {acc_ref:.2f}%", t_ref / per_point,
            ">= 3x at equal accuracy (within 0.5 points)", t_ref / per_point >= 3 and gap <= 0.5)


# ------------------------------------------------------------------------------- feature augmentations

AUGMENTATIONS = {"noise": noise, "isda": isda, "afan": afan, "flow": flow}


def grid_of(name: str, epochs: int, seeds: int = 1) -> list[dict]:
    """The YAML's grid of `name` with `epochs` epochs, each point with seeds 0 .. seeds - 1."""
    params, grid = method_config(name)
    return [{**params, **combo, "seed": s, "epochs": epochs} for combo in grid_points(grid) for s in range(seeds)]


def bench_methods(args) -> None:
    """Cost per grid point of each augmentation's YAML grid vs sgd's YAML grid, on the SeA benchmark's shape."""
    n = args.sea_rows + args.sea_test_rows
    X, y = synthetic_features(n, dim=args.dim, num_classes=args.sea_classes, noise=4.0, seed=2)
    Xtr, ytr, Xte, yte = X[:args.sea_rows], y[:args.sea_rows], X[args.sea_rows:], y[args.sea_rows:]
    grids = {name: grid_of(name, args.sea_epochs, args.seeds) for name in ("sgd", *AUGMENTATIONS)}
    print(f"methods: train {tuple(Xtr.shape)} float32, held-out {tuple(Xte.shape)}, {args.sea_classes} classes, "
          f"{args.sea_epochs} epochs, {args.seeds} seed(s) per point (a run's); each method's YAML grid: "
          + ", ".join(f"{k} {len(v) // args.seeds} points" for k, v in grids.items()), flush=True)
    out, flow_fit = {}, []

    def runner(name):
        module = sgd if name == "sgd" else AUGMENTATIONS[name]

        def run():
            if name != "flow":
                out[name] = module.fit(Xtr, ytr, num_classes=args.sea_classes, points=grids[name], device="cpu")
                return
            with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: the flows are fitted in every repeat
                costs = {}
                out[name] = flow.fit(Xtr, ytr, num_classes=args.sea_classes, points=grids[name], device="cpu",
                                     cache_dir=Path(tmp), costs=costs)
                flow_fit.append(costs["timings"]["flow_fit"])
        return run

    names = list(grids)
    times = dict(zip(names, map(statistics.median, alternate(*map(runner, names), repeats=args.repeats))))
    points = {k: len(v) // args.seeds for k, v in grids.items()}  # grid points, each with its seeds
    base = times["sgd"] / points["sgd"]
    acc = {k: max(accuracy(v, Xte, yte)) for k, v in out.items()}
    print(f"methods: sgd {base:.3f} s per point ({times['sgd']:.1f} s / {points['sgd']}), best held-out "
          f"accuracy {acc['sgd']:.2f}%")
    for name in AUGMENTATIONS:
        per_point = times[name] / points[name]
        note = ""
        if name == "flow":
            fit = statistics.median(flow_fit)
            full = method_config("flow")[0]["epochs"]  # a run's epochs: the fits amortised over all of them
            amortised = ((times[name] - fit) * full / args.sea_epochs + fit) / points[name] / (base * full / args.sea_epochs)
            note = (f" (of which the flows' fits {fit:.1f} s; without them {(times[name] - fit) / points[name]:.3f}"
                    f" s per point, {(times[name] - fit) / points[name] / base:.2f}x; at the YAML's {full} epochs, "
                    f"training scaled by {full}/{args.sea_epochs} and the fits once: {amortised:.2f}x)")
        verdict(name, f"cost per grid point of its {points[name]}-point YAML grid vs sgd's {points['sgd']}"
                "-point grid", f"{per_point:.3f} s vs {base:.3f} s (median of {args.repeats}), best held-out "
                f"accuracy {acc[name]:.2f}%{note}", per_point / base, "<= 2x", per_point <= 2 * base)


# --------------------------------------------------------------------------------------------- extraction


def write_jpegs(folder: Path, count: int, size: int) -> ImageList:
    """`count` JPEGs of size x size with smooth random content (so they compress like photos)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(3)
    items = []
    for i in range(count):
        coarse = torch.rand(1, 3, 8, 8, generator=gen)
        image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        image = (image[0].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        items.append(str(path))
    return ImageList(items, [i % 10 for i in range(count)], read_rgb)


def bench_extraction(args) -> None:
    extract = config.read_yaml(config.CONF / "config.yaml")["extract"]
    batch_size = args.batch_size or extract["batch_size"]
    workers = extract["num_workers"] if args.workers is None else args.workers
    preprocess = {"resize": args.input_size, "crop": args.input_size, "interpolation": "bicubic",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        images = write_jpegs(tmp / "images", args.images, args.jpeg_size)
        bb = backbones.create(name=args.arch, arch=args.arch, source="random", preprocess=preprocess, cache_dir=tmp)
        print(f"extraction: {args.images} JPEGs of {args.jpeg_size}x{args.jpeg_size} on disk, timm {args.arch} "
              f"random init, input {args.input_size}x{args.input_size}, batch {batch_size}, {workers} loader "
              f"workers (conf/config.yaml extract), torch threads {torch.get_num_threads()}", flush=True)
        decoded = [torch.stack([bb.transform(read_rgb(p)) for p in images.items[i:i + batch_size]])
                   for i in range(0, len(images), batch_size)]
        model = bb.model.eval()

        def end_to_end():
            features.extract(model, images.with_transform(bb.transform), batch_size=batch_size,
                             num_workers=workers, device=torch.device("cpu"))

        def bare():
            with torch.inference_mode():
                for x in decoded:
                    model(x)

        bare()  # warm-up: first-call allocations
        t_e2e, t_bare = map(statistics.median, alternate(end_to_end, bare, repeats=args.repeats))
        rate_e2e, rate_bare = len(images) / t_e2e, len(images) / t_bare
        verdict("extraction", "end-to-end bench.features.extract from JPEG files vs the bare forward pass on the "
                "same decoded batches", f"{rate_e2e:.1f} vs {rate_bare:.1f} images/s (median of {args.repeats})",
                rate_e2e / rate_bare, ">= 0.8x", rate_e2e / rate_bare >= 0.8)

        def get():
            return features.cached(bb, "synthetic", "train", images, cache_dir=tmp / "cache", batch_size=batch_size,
                                   num_workers=workers, device=torch.device("cpu"))

        start = time.perf_counter()
        _, _, info = get()
        t_miss = time.perf_counter() - start
        assert not info["hit"]
        hits = alternate(get, repeats=max(args.repeats, 5))[0]
        t_hit = statistics.median(hits)
        verdict("cache", "bench.features.cached: second call (hit) vs first call (extraction + write)",
                f"{1000 * t_hit:.1f} ms vs {t_miss:.2f} s (hit: median of {len(hits)})", t_miss / t_hit,
                ">= 50x", t_miss / t_hit >= 50)


# ------------------------------------------------------------------------------------------------- memory

CHILD = r"""
import gc, json, resource, sys
import torch
from benchmarks.speed import method_config, synthetic_features
from bench.methods import isda, linear, sea
from bench.protocol import grid_points

method, rows, dim, classes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
X, y = synthetic_features(rows, dim=dim, num_classes=classes, noise=4.0, seed=4)
gc.collect()

def rss():  # current resident set size, bytes
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

def peak_rss():  # bytes; Linux: VmHWM, the peak clear_refs resets (ru_maxrss also keeps the peak of the
    try:         # moment any thread exited, which a reset does not lower)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

before_peak = peak_rss()  # imports and building the features touch more than they keep
try:  # Linux: reset the peak to the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
baseline = rss()
params, grid = method_config(method)
if method == "linear":  # three grid points: the memory of a sweep does not grow with its length
    points = [{**params, "penalty": p, "max_iter": 20} for p in (1e3, 1.0, 1e-3)]
    linear.fit(X, y, num_classes=classes, points=points, device="cpu")
elif method == "isda":  # the YAML's whole grid x 3 seeds (the default), one epoch
    points = [{**params, **combo, "seed": s, "epochs": 1} for combo in grid_points(grid) for s in range(3)]
    # every step of a stack has the same shapes, so its peak is reached by its first steps: the first
    # `full` steps of each stack compute ISDA's gradient, the others a zero one (hours of CPU saved)
    real, calls, full = isda.weight_grad, {}, int(sys.argv[5])
    def weight_grad(W, xs, slot, y1, hp):
        calls[id(hp)] = calls.get(id(hp), 0) + 1
        return real(W, xs, slot, y1, hp) if calls[id(hp)] <= full else torch.zeros_like(W)
    isda.weight_grad = weight_grad
    isda.fit(X, y, num_classes=classes, points=points, device="cpu")
else:  # the YAML's grid (eta x lr x center), one seed, one epoch
    points = [{**params, "eta": e, "lr": lr, "center": c, "seed": 0, "epochs": 1}
              for e in grid["eta"] for lr in grid["lr"] for c in grid["center"]]
    sea.fit(X, y, num_classes=classes, points=points, device="cpu")
peak = peak_rss()
print(json.dumps({"baseline": baseline, "before_peak": before_peak, "reset": reset, "peak": peak, "points": len(points),
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "features": X.element_size() * X.numel() + y.element_size() * y.numel()}))
"""


def bench_memory(args) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for method in ("linear", "sea"):
        run = subprocess.run([sys.executable, "-c", CHILD, method, str(args.memory_rows), str(args.dim),
                              str(args.memory_classes)], check=False, capture_output=True, text=True, env=env,
                             cwd=ROOT)
        if run.returncode:
            raise SystemExit(f"memory child ({method}) failed:\n{run.stderr}")
        m = json.loads(run.stdout.strip().splitlines()[-1])
        extra, size = m["peak"] - m["baseline"], m["features"]
        mib = 2 ** 20
        verdict("memory", f"{method} fit ({m['points']} points) on X {args.memory_rows}x{args.dim} float32 + "
                "labels, peak RSS above the baseline after imports and features vs the feature matrices",
                f"{extra / mib:.0f} MiB vs {size / mib:.0f} MiB (baseline {m['baseline'] / mib:.0f} MiB, peak "
                f"{m['peak'] / mib:.0f} MiB; ru_maxrss {m['ru_maxrss'] / mib:.0f} MiB)", extra / size, "<= 2x",
                extra <= 2 * size)
        if not m["reset"] and m["before_peak"] > m["baseline"] + 0.05 * size:
            print(f"memory: note: the peak before the fit ({m['before_peak'] / mib:.0f} MiB) exceeds the baseline "
                  "and could not be reset (/proc/self/clear_refs): the figure may be the earlier peak, not the fit's")


def bench_isda_memory(args) -> None:
    """ISDA's whole grid (x 3 seeds) on a SUN397-shaped problem: peak resident memory of the process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", CHILD, "isda", str(args.sun_rows), str(args.dim), str(args.sun_classes),
                          str(args.sun_steps)],
                         check=False, capture_output=True, text=True, env=env, cwd=ROOT)
    if run.returncode:
        raise SystemExit(f"memory child (isda) failed:\n{run.stderr}")
    m = json.loads(run.stdout.strip().splitlines()[-1])
    gib = 2 ** 30
    verdict("isda-memory", f"isda fit, the YAML's whole grid x 3 seeds ({m['points']} heads, one epoch of which "
            f"the first {args.sun_steps} steps per stack compute the gradient) on X "
            f"{args.sun_rows}x{args.dim} float32, {args.sun_classes} classes (SUN397-shaped): peak RSS of the process",
            f"{m['peak'] / gib:.2f} GiB (features {m['features'] / gib:.2f} GiB, baseline after imports and features "
            f"{m['baseline'] / gib:.2f} GiB)", m["peak"] / (4 * gib), "<= 4 GiB (ratio to 4 GiB <= 1)",
            m["peak"] <= 4 * gib)


TARGETS = {"linear": bench_linear, "sea": bench_sea, "methods": bench_methods, "isda-memory": bench_isda_memory,
           "extraction": bench_extraction, "memory": bench_memory}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(TARGETS), default=list(TARGETS), help="targets to run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side per comparison (median reported)")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-50: 2048)")
    p.add_argument("--linear-shapes", nargs="+", choices=list(LINEAR_SHAPES), default=list(LINEAR_SHAPES),
                   help="probe shapes: a 25,000 x 2048 101 classes, b 7,200 x 784 10 classes (MNIST-like), "
                   "c 45,000 x 96 10 classes (nearly collinear)")
    p.add_argument("--linear-scale", type=float, default=1.0, help="fraction of each probe shape's train rows")
    p.add_argument("--linear-repeats", type=int, default=1, help="runs of each probe sweep (median reported)")
    p.add_argument("--linear-gap-points", type=int, default=3, help="penalties (spread over the grid, the "
                   "weakest and strongest included) refitted alone from zero to tight tolerances for the gap")
    p.add_argument("--linear-early-end", type=int, default=0, help="also time both sweeps with the probe's "
                   "option early_end=N (off by default: 0), which ends a sweep once N penalties in a row score "
                   "below the best val so far")
    p.add_argument("--sea-rows", type=int, default=5000, help="SeA train rows")
    p.add_argument("--sea-test-rows", type=int, default=2000, help="SeA held-out rows")
    p.add_argument("--sea-classes", type=int, default=50, help="SeA classes")
    p.add_argument("--sea-epochs", type=int, default=10, help="SeA epochs (the YAML has 100)")
    p.add_argument("--seeds", type=int, default=3, help="methods: seeds per grid point (conf/config.yaml's 3): "
                   "the flow's fit is amortised over the grid and the seeds, as in a run")
    p.add_argument("--images", type=int, default=256, help="JPEG files to extract")
    p.add_argument("--jpeg-size", type=int, default=256, help="side of each JPEG, pixels")
    p.add_argument("--input-size", type=int, default=224, help="resize + crop size fed to the model")
    p.add_argument("--arch", default="resnet18", help="timm architecture (random init)")
    p.add_argument("--batch-size", type=int, default=None, help="extraction batch (default: conf/config.yaml)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: conf/config.yaml)")
    p.add_argument("--memory-rows", type=int, default=50000, help="rows of the memory run's feature matrix")
    p.add_argument("--memory-classes", type=int, default=101, help="classes of the memory run")
    p.add_argument("--sun-rows", type=int, default=15880, help="rows of the ISDA memory run (SUN397 train: 15,880)")
    p.add_argument("--sun-classes", type=int, default=397, help="classes of the ISDA memory run (SUN397: 397)")
    p.add_argument("--sun-steps", type=int, default=3, help="steps per stack of the ISDA memory run that compute "
                   "the gradient (the peak of a stack is reached by its first step)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}", flush=True)
    for name in args.only:
        start = time.perf_counter()
        TARGETS[name](args)
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
