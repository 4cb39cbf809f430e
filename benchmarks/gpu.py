"""The GPU check (DESIGN section 9, issue 20): one command, on one GPU, inside 8 minutes.

    python benchmarks/gpu.py                 # on a GPU: the figures below, one line each, and gpu.json
    python benchmarks/gpu.py --tiny          # every section at tiny sizes on a CPU, in seconds (a test runs it)

Sections, in order (each line says what was compared and the target where DESIGN sets one):
  extraction  ResNet-50 (timm, random init) over real JPEG files (crops of scikit-learn's two bundled
              photographs, written here) through seabench's loader and feature-cache write (bench.features
              .cached: float16 autocast and channels_last on a GPU), against the bare model on batches already
              on the GPU; and decoding on the GPU (torchvision.io.decode_jpeg on cuda) as the alternative;
  probe       bench.methods.linear.fit's 45-penalty sweep at Food-101's shape against scikit-learn's
              warm-started sweep on this machine's CPUs, and whether they pick the same penalty on val;
  methods     each feature method's YAML grid x 3 seeds at Food-101's shape: seconds per grid point at the
              YAML's epochs (measured over --epochs, scaled), peak GPU memory;
  finetune    ResNet-50 training images/s at 224 px, batch 64, bfloat16: a bare step on GPU tensors with and
              without channels_last and torch.compile, and bench.finetune.loop.train (the real loop);
  table       one backbone's 11-task table in GPU-hours (benchmarks/gpu_cost.py) and its fine-tune column.

Everything goes to <out>/gpu.json (--out, else $OUT, else results/gpu). Nothing is asserted: a figure that
misses its target says MISS. --budget-s: sections that would not fit in what is left are skipped, said so.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py, gpu_images.py ... beside this file
import gpu_cost
from flow_steps import cifar10_estimate, step_seconds
from gpu_images import bench_extraction, bench_finetune, timed
from speed import grid_of, method_config, synthetic_features

from bench.methods import afan, flow, isda, linear, noise, sea, sgd

METHODS = {"sgd": sgd, "sea": sea, "isda": isda, "afan": afan, "flow": flow, "noise": noise}
SIZES = {  # full: the check on a GPU (Food-101: 75,750 train+val = 68,175 + 7,575, 101 classes, ResNet-50's
    # 2048-d); tiny: the same code in seconds on a CPU
    "full": {"images": 5000, "jpeg": (384, 512), "arch": "resnet50", "input": 224, "probe_rows": 75_750,
             "probe_held_out": 7_575, "rows": 68_175, "classes": 101, "dim": 2048, "epochs": 2,
             "ft_batch": 64, "ft_steps": 20, "loop_steps": 10, "compile_backend": "inductor",
             "sklearn_budget_s": 90, "flow": {"resolutions": [32, 224], "levels": 3, "steps_per_level": 32,
                                              "hidden": 512, "batch": 64}},
    "tiny": {"images": 24, "jpeg": (48, 64), "arch": "test_resnet", "input": 32, "probe_rows": 300,
             "probe_held_out": 100, "rows": 300, "classes": 5, "dim": 32, "epochs": 1, "ft_batch": 8,
             "ft_steps": 2, "loop_steps": 2, "compile_backend": "eager", "sklearn_budget_s": 60,
             "flow": {"resolutions": [8], "levels": 1, "steps_per_level": 2, "hidden": 8, "batch": 4}},
}
SECTIONS = ("extraction", "probe", "methods", "finetune", "table", "flow")
log = logging.getLogger("gpu")


class Report:
    """The figures: one printed line each, all of them in the JSON."""

    def __init__(self, out: Path, machine: dict, sizes: dict):
        self.path, self.start = out / "gpu.json", time.perf_counter()
        self.data = {"machine": machine, "sizes": sizes, "figures": {}, "skipped": [], "errors": {}}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, value, unit: str, what: str, **extra) -> None:
        self.data["figures"][name] = {"value": value, "unit": unit, "what": what, **extra}
        shown = f"{value:.4g}" if isinstance(value, float) else value
        notes = "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items())
        print(f"[{name}] {shown} {unit}: {what}" + (f" ({notes})" if notes else ""), flush=True)

    def save(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.start, 1)
        self.path.write_text(json.dumps(self.data, indent=1))


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are): the GPU's peak allocation since the last reset, or the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (ru_maxrss, no GPU)"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------------------------- linear probe


def sklearn_capped(Xtr, ytr, Xval, penalties, *, params: dict, budget_s: float) -> tuple[dict, float]:
    """speed.py's `sklearn_sweep` (ssl-transfer's probe: standardised features, one warm-started L-BFGS
    LogisticRegression refitted for C = 1 / penalty, strongest first), stopped between penalties once
    `budget_s` seconds are spent: {penalty: predictions on Xval} of the penalties it reached, and the start."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    scaler = StandardScaler().fit(Xtr)
    A, B = scaler.transform(Xtr), scaler.transform(Xval)
    est, pred = LogisticRegression(max_iter=params["max_iter"], tol=params["tol"], warm_start=True), {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter; the same budget applies to ours
        for penalty in sorted(penalties, reverse=True):
            if time.perf_counter() - start > budget_s:
                break
            pred[penalty] = est.set_params(C=1 / penalty).fit(A, ytr).predict(B)
    return pred, start


def bench_probe(args, size: dict, device: torch.device, report: Report) -> float:
    """Our sweep vs scikit-learn's; each side picks on val (ties: the first, as the protocol), its pick's
    accuracy on test is compared (DESIGN section 9: the same pick, or test accuracy within 0.3 points)."""
    params, grid = method_config("linear")
    penalties = grid["penalty"]
    points = [{**params, "penalty": p} for p in penalties]
    n, held = size["probe_rows"], size["probe_held_out"]
    X, y = synthetic_features(n + 2 * held, dim=size["dim"], num_classes=size["classes"], noise=4.0, seed=1)
    Xtr, ytr, Xho, yho = X[:n], y[:n], X[n:], y[n:]  # held-out: val (the first `held` rows), then test
    linear.fit(Xtr[:1000], ytr[:1000], num_classes=size["classes"], points=points[:2], device=device)  # warm-up
    heads = {}
    ours = timed(lambda: heads.setdefault("ours", linear.fit(Xtr, ytr, num_classes=size["classes"], points=points,
                                                             device=device)), device)
    correct = {"ours": heads["ours"].predict(Xho).eq(yho).double()}  # [penalties, 2 * held]
    done, start = sklearn_capped(Xtr.numpy(), ytr.numpy(), Xho.numpy(), penalties, params=params,
                                 budget_s=size["sklearn_budget_s"])
    theirs, complete = time.perf_counter() - start, len(done) == len(penalties)
    if complete:
        correct["sklearn"] = torch.tensor(np.stack([done[p] for p in penalties])).eq(yho).double()
    pick = {k: int(v[:, :held].mean(1).argmax()) for k, v in correct.items()}
    test = {k: 100 * correct[k][i, held:].mean().item() for k, i in pick.items()}
    ratio, same = theirs / ours, complete and pick["ours"] == pick["sklearn"]
    close = complete and abs(test["ours"] - test["sklearn"]) <= 0.3
    verdict = (("PASS" if ratio >= 20 and (same or close) else "MISS") if complete else
               f"sklearn stopped after {len(done)} penalties ({size['sklearn_budget_s']} s): the ratio is a lower bound")
    report.add("probe_seconds", ours, "s", f"bench.methods.linear.fit, the YAML's {len(penalties)} penalties on "
               f"{n} x {size['dim']}, {size['classes']} classes, on {device.type}; val and test {held} rows each",
               sklearn_seconds=theirs, sklearn_penalties_fitted=len(done), ratio=ratio,
               same_pick=same if complete else None, pick_ours=penalties[pick["ours"]],
               pick_sklearn=penalties[pick["sklearn"]] if complete else None, test_ours=test["ours"],
               test_sklearn=test.get("sklearn"), target=">= 20x scikit-learn's warm-started sweep on this "
               "machine's CPUs; the same pick on val, or test accuracy within 0.3 points", verdict=verdict)
    return ours


# ------------------------------------------------------------------------------------------- feature methods


def bench_methods(args, size: dict, device: torch.device, report: Report) -> dict[str, float]:
    """Seconds per grid point (its 3 seeds) at the YAML's epochs, from a fit of --epochs; peak memory."""
    n, classes = size["rows"], size["classes"]
    X, y = synthetic_features(n, dim=size["dim"], num_classes=classes, noise=4.0, seed=2)
    X, y = X.to(device), y.to(device)
    warm = grid_of("sgd", 1, 1)[:1]
    sgd.fit(X[:1024], y[:1024], num_classes=classes, points=warm, device=device)  # CUDA context, cuBLAS handles
    per_point = {}
    for name, module in METHODS.items():
        points = grid_of(name, size["epochs"], args.seeds)
        full = method_config(name)[0]["epochs"]
        grid = len(points) // args.seeds
        costs = {}
        reset_peak(device)
        with tempfile.TemporaryDirectory() as tmp:  # flow: a fresh flow cache, so its fits are paid here
            kwargs = {"cache_dir": Path(tmp), "costs": costs} if name == "flow" else {}
            seconds = timed(lambda m=module, p=points, k=kwargs: m.fit(X, y, num_classes=classes, points=p,
                                                                      device=device, **k), device)
        fixed = costs.get("timings", {}).get("flow_fit", 0.0)  # paid once per run, not per epoch
        per_point[name] = ((seconds - fixed) * full / size["epochs"] + fixed) / grid
        peak, kind = peak_memory(device)
        report.add(f"method_{name}_seconds_per_point", per_point[name], "s",
                   f"{name}: its YAML grid ({grid} points) x {args.seeds} seeds on {n} x {size['dim']}, {classes} "
                   f"classes, {device.type}; measured over {size['epochs']} epoch(s), scaled to the YAML's {full}",
                   measured_seconds=seconds, fixed_seconds=fixed, peak_memory_bytes=peak, memory=kind)
    return per_point


# ------------------------------------------------------------------------------------------------- the table


def bench_table(args, size: dict, figures: dict, report: Report) -> None:
    from bench.protocol import grid_points

    needed = ("extraction_images_per_s", "probe_seconds", "seconds_per_point", "finetune_images_per_s")
    if missing := [k for k in needed if k not in figures]:
        raise RuntimeError(f"the table needs the figures {missing}, which an earlier section did not give")
    points = {name: len(grid_points(method_config(name)[1])) for name in ("linear", *METHODS)}
    params, grid = method_config("finetune")
    finetune = {"points": len(grid_points(grid)), "seeds": args.seeds, "steps": params["steps"],
                "batch_size": params["batch_size"]}
    shape = {"train": size["rows"], "classes": size["classes"], "probe_train": size["probe_rows"]}
    cost = gpu_cost.table_cost(figures, shape=shape, grid_points=points, finetune=finetune)
    report.data["table"] = cost
    note = "" if not args.tiny else " (tiny sizes: the measured shape is the tiny one, not Food-101's)"
    report.add("table_feature_gpu_hours", cost["feature_gpu_hours"], "GPU-hours", "one backbone's 11-task table: "
               f"extraction + linear + {', '.join(METHODS)}, {args.seeds} seeds, protocol=selection{note}",
               target="<= 1", verdict="PASS" if cost["feature_gpu_hours"] <= 1 else "MISS")
    report.add("table_finetune_gpu_hours", cost["finetune_gpu_hours"], "GPU-hours", "its fine-tune column: "
               f"{cost['finetune_runs_per_dataset']} runs of {finetune['steps']} x {finetune['batch_size']} images "
               f"per dataset at finetune_loop_images_per_s, with their predictions{note}")


def bench_flow(args, size: dict, device: torch.device, report: Report) -> None:
    """method=finetune_flow (issue 22): one Glow training step and one perturbed fine-tuning step (adv: 3 L2
    PGD steps; rand) beside a plain one, at each Glow resolution (32 px as the paper's CIFAR runs, and 224 px),
    with the official Glow (3 x 32 x 512) and the table's backbone; then a CIFAR-10 cell's cost from them."""
    flow = size["flow"]
    for resolution in flow["resolutions"]:
        got = step_seconds(resolution=resolution, device=device, arch=size["arch"], input_size=size["input"],
                           batch=flow["batch"], levels=flow["levels"], steps_per_level=flow["steps_per_level"],
                           hidden=flow["hidden"], repeats=1 if args.tiny else 3)
        report.data.setdefault("flow", {})[str(resolution)] = got
        for key in ("glow", "finetune", "finetune_flow_adv", "finetune_flow_rand"):
            report.add(f"flow_{resolution}px_{key}_step_s", got[f"{key}_step_s"], "s",
                       f"one {key.replace('_', ' ')} step, Glow at {resolution} px, {size['arch']} at "
                       f"{size['input']} px", batch=got[f"{key}_batch"])
        if not args.tiny and resolution == 32:
            cost = cifar10_estimate(got)
            report.data["flow"]["cifar10_estimate"] = cost
            report.add("flow_cifar10_glow_hours", cost["glow_hours"], "GPU-hours", "the Glow's 195,500 steps")
            report.add("flow_cifar10_grid_hours", cost["grid_hours"], "GPU-hours", "finetune_flow's default grid "
                       "on CIFAR-10 (5,000 steps per run)")


# ---------------------------------------------------------------------------------------------------- main


def machine(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    memory = torch.cuda.get_device_properties(device).total_memory if gpu else None
    return {"device": gpu or "cpu", "gpu_memory_bytes": memory, "cpus": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def parse(argv) -> argparse.Namespace:
    from bench import config

    extract = config.read_yaml(config.CONF / "config.yaml")["extract"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="every section at tiny sizes (a CPU, seconds)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "results/gpu"),
                   help="folder of gpu.json (default: $OUT when set, else results/gpu)")
    p.add_argument("--device", default="auto", help="auto: cuda when there is one, else cpu")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader processes")
    p.add_argument("--config-workers", type=int, default=extract["num_workers"],
                   help="loader processes of the second extraction figure (conf/config.yaml's)")
    p.add_argument("--batch-size", type=int, default=extract["batch_size"], help="extraction batch")
    p.add_argument("--seeds", type=int, default=3, help="seeds per grid point (a run's: conf/config.yaml)")
    p.add_argument("--budget-s", type=float, default=420, help="seconds this script may take; what would not "
                   "fit is skipped and said so")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run (the "
                   "table needs the four before it)")
    p.add_argument("--compile-reserve-s", type=float, default=120, help="seconds that must be left to start a "
                   "torch.compile figure (its compilation)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    size = SIZES["tiny" if args.tiny else "full"]
    report = Report(args.out, machine(device), size)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in report.data["machine"].items()), flush=True)
    left = lambda: args.budget_s - (time.perf_counter() - report.start)
    figures, errors = {}, report.data["errors"]
    with tempfile.TemporaryDirectory() as tmp:
        sections = {
            "extraction": lambda: figures.update(extraction_images_per_s=bench_extraction(
                args, size, device, report, Path(tmp))),
            "probe": lambda: figures.update(probe_seconds=bench_probe(args, size, device, report)),
            "methods": lambda: figures.update(seconds_per_point=bench_methods(args, size, device, report)),
            "finetune": lambda: figures.update(finetune_images_per_s=bench_finetune(
                args, size, device, report, Path(tmp), left)),
            "table": lambda: bench_table(args, size, figures, report),
            "flow": lambda: bench_flow(args, size, device, report),
        }
        for name, run in sections.items():
            if name not in args.only:
                continue
            if left() <= 0:
                report.data["skipped"].append(f"{name}: the budget ({args.budget_s:g} s) is spent")
                print(f"({name}: skipped, the budget of {args.budget_s:g} s is spent)", flush=True)
                continue
            start = time.perf_counter()
            try:
                run()
            except Exception as err:  # one window on the GPU: the other sections still run
                log.exception("section %s failed", name)
                errors[name] = f"{type(err).__name__}: {err}"
            print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)
            report.save()
    report.save()
    print(f"wrote {report.path} ({report.data['seconds']} s)", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
