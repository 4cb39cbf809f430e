"""The GPU path, checked on a GPU: the tests marked `cuda` are skipped without one and run by the GPU check
(benchmarks/gpu_check.sh, `make bench-gpu`). Each compares the GPU's result with a reference by a helper
that the unmarked tests here run on the CPU too, so the comparisons cannot rot where no GPU is at hand.

- float16 extraction (autocast, channels_last) agrees with float32: cosine >= 0.999 for every example's
  feature vector, and the probe picks the same penalty on digits (or two that tie within one val example);
- a stacked fit on CUDA equals the CPU's within STACK_RTOL (float32 sums in another order: cuBLAS's, not
  the CPU's; the CPU tests hold a fit on features moved at float32's rounding to the same tolerance);
- fine-tuning resumed from a checkpoint ends with the weights of an uninterrupted run: bit-identical when two
  uninterrupted runs are (cuDNN deterministic), else within RESUME_RTOL of them;
- a run's record carries the GPU's peak memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from harness import own_env, seabench_in_process

from bench import backbones, features
from bench.data import digits
from bench.methods import afan, isda, linear, sea, sgd
from bench.protocol import select

ROOT = Path(__file__).resolve().parents[1]


def cuda(test):
    """Marked `cuda` (pytest -m cuda: the GPU check's selection) and skipped where there is no GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")(test))


COSINE_MIN = 0.999  # float16 autocast vs float32, per example's feature vector (the bound)
STACK_RTOL = 1e-3   # largest |W_a - W_b| / largest |W_b| after 2 epochs: float32 rounding, amplified by SGD
RESUME_RTOL = 1e-4  # resumed vs uninterrupted, where two uninterrupted runs already differ (atomics in cuDNN)


def conf(group: str, name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / group / f"{name}.yaml").read_text())


def digits_task():
    return digits.load(**{k: v for k, v in conf("dataset", "digits")["load"].items() if k != "_target_"})


# ------------------------------------------------------------------------------------ float16 vs float32


def row_cosines(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of A with the same row of B, in float64."""
    return F.cosine_similarity(A.double(), B.double(), dim=1)


def probe_curve(data: dict, *, device) -> dict:
    """The probe's selection on digits (the YAML's 45 penalties, the selection rule): pick and val curve."""
    from bench.config import compose

    method = compose(["method=linear"])["method"]
    return select(linear.fit, data, params=method["params"], grid=method["grid"], seeds=[0], metric="top1",
                  num_classes=10, device=device, val_fraction=0.1, split_seed=0)


def same_pick(a: dict, b: dict, val_size: int) -> bool:
    """The same penalty, or picks that tie within one val example on both curves: digits' 300 val images
    score in steps of 1/3 point, so a feature rounded differently can flip a near-tie between neighbours."""
    if a["chosen"] == b["chosen"]:
        return True
    step = 100 / val_size + 1e-9
    at = lambda out, point: next(c["val"] for c in out["curve"] if c["point"] == point)
    return all(max(c["val"] for c in out["curve"]) - at(out, other["chosen"]) <= step
               for out, other in ((a, b), (b, a)))


def agreement(low: dict, high: dict) -> tuple[float, bool, dict, dict]:
    """(smallest row cosine over every split, whether the probe picks the same penalty, both probes' picks).
    The probes run on the CPU (in float64 there): what is compared is the features, not the probe's device."""
    cos = min(row_cosines(low[s][0], high[s][0]).min().item() for s in high)
    a, b = probe_curve(low, device="cpu"), probe_curve(high, device="cpu")
    return cos, same_pick(a, b, len(high["val"][1])), a["chosen"], b["chosen"]


def extracted(backbone_name: str, device, tmp: Path, *, amp: bool, size: int | None = None) -> dict:
    """Features of digits' three splits and their labels: {split: (X, y)}."""
    c = conf("backbone", backbone_name)
    if size:
        c["preprocess"] |= {"resize": size, "crop": size}
    bb = backbones.create(**c, cache_dir=tmp)
    task = digits_task()
    return {s: (features.extract(bb.model, images.with_transform(bb.transform), batch_size=256, num_workers=0,
                                 device=device, amp=amp), torch.tensor(images.labels))
            for s, images in task.splits.items()}


def test_agreement_passes_float16_rounding_and_catches_a_real_change(tmp_path):
    """On the CPU: features rounded to float16 agree with themselves by the bound and the same pick; the same
    features with noise of a tenth of their spread do not."""
    high = extracted("test_resnet", torch.device("cpu"), tmp_path, amp=False)
    rounded = {s: (X.half().float(), y) for s, (X, y) in high.items()}
    cos, same, *_ = agreement(rounded, high)
    assert cos >= COSINE_MIN and same
    gen = torch.Generator().manual_seed(0)
    noisy = {s: (X + 0.1 * X.std() * torch.randn(X.shape, generator=gen), y) for s, (X, y) in high.items()}
    assert agreement(noisy, high)[0] < COSINE_MIN


@cuda
@pytest.mark.parametrize("backbone_name,size", [("random_resnet10t", None), ("random_resnet10t", 224)])
def test_float16_extraction_agrees_with_float32_on_cuda(backbone_name, size, tmp_path, record_property):
    device = torch.device("cuda")
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the reference is float32 itself, not TF32 convolutions
    try:
        high = extracted(backbone_name, device, tmp_path, amp=False, size=size)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    torch.cuda.reset_peak_memory_stats(device)
    low = extracted(backbone_name, device, tmp_path, amp=True, size=size)
    record_property("peak_memory_bytes_float16_extraction", torch.cuda.max_memory_allocated(device))
    threads = torch.get_num_threads()
    torch.set_num_threads(min(16, os.cpu_count() or 1))  # the probes run on the CPU: the GPU machine's cores
    try:
        cos, same, pick_low, pick_high = agreement(low, high)
    finally:
        torch.set_num_threads(threads)
    record_property("smallest_cosine", cos)
    record_property("picks_float16_float32", f"{pick_low} {pick_high}")
    assert cos >= COSINE_MIN, f"float16 vs float32: smallest cosine {cos:.6f}"
    assert same, f"the probe picks {pick_low} on float16 features, {pick_high} on float32 ones"


# --------------------------------------------------------------------------------- stacked fit, CUDA vs CPU

STACKED = {"sgd": sgd, "sea": sea, "isda": isda, "afan": afan}  # no draws on the device (noise, flow draw there)


def problem(n: int = 1200, dim: int = 64, classes: int = 10):
    gen = torch.Generator().manual_seed(5)
    y = torch.randint(0, classes, (n,), generator=gen)
    X = torch.relu(3 * torch.randn(classes, dim, generator=gen)[y] + 4 * torch.randn(n, dim, generator=gen))
    return X, y


def stacked_points(name: str) -> list[dict]:
    from bench.config import compose
    from bench.protocol import grid_points

    method = compose([f"method={name}"])["method"]
    return [{**method["params"], **combo, "seed": s, "epochs": 2} for combo in grid_points(method["grid"])
            for s in (0, 1)]


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| over the largest |b| (both moved to the CPU, in float64)."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(STACKED))
def test_a_stacked_fit_moved_by_rounding_stays_within_the_tolerance(name):
    """On the CPU: what the CUDA test allows (STACK_RTOL) covers differences at float32's rounding: the features
    changed by one part in 10^6 (what another order of summation does) move the weights by less than it;
    a change of 1% of the weights' scale is caught."""
    X, y = problem()
    points = stacked_points(name)
    gen = torch.Generator().manual_seed(1)
    base = STACKED[name].fit(X, y, num_classes=10, points=points, device="cpu")
    moved = STACKED[name].fit(X * (1 + 1e-6 * torch.randn(X.shape, generator=gen)), y, num_classes=10,
                              points=points, device="cpu")
    assert relative_gap(moved.weight, base.weight) <= STACK_RTOL
    assert relative_gap(moved.weight + 0.01 * base.weight.abs().max(), base.weight) > STACK_RTOL


@cuda
@pytest.mark.parametrize("name", list(STACKED))
def test_a_stacked_fit_on_cuda_equals_the_cpus(name, record_property):
    X, y = problem()
    points = stacked_points(name)
    torch.cuda.reset_peak_memory_stats()
    gpu = STACKED[name].fit(X, y, num_classes=10, points=points, device="cuda")
    record_property("peak_memory_bytes", torch.cuda.max_memory_allocated())
    cpu = STACKED[name].fit(X, y, num_classes=10, points=points, device="cpu")
    gap = relative_gap(gpu.weight, cpu.weight)
    record_property("relative_gap", gap)
    assert gap <= STACK_RTOL, f"{name}: CUDA vs CPU weights differ by {gap:.2e} of their largest"
    agree = (gpu.predict(X) == cpu.predict(X)).double().mean().item()
    assert agree >= 0.99, f"{name}: CUDA and CPU heads agree on {100 * agree:.2f}% of the rows"


# ----------------------------------------------------------------------------------- fine-tuning resumes


class Stop(Exception):
    """Raised from inside the loop: the run ends there, as a killed job does, with its last checkpoint."""


def finetune_run(tmp, device, *, steps: int, stop_after: int | None = None, every: int = 1000):
    """Final weights of a fine-tuning run of `steps` steps (test_resnet on digits at 32 px, batch 16); with
    `stop_after`, the run is stopped at its next forward pass after that step's checkpoint and started again."""
    from bench.finetune import checkpoint, network
    from bench.finetune.loop import train

    c = conf("backbone", "test_resnet")
    bb = backbones.create(**c, cache_dir=tmp)
    point = {**conf("method", "finetune")["params"], "seed": 0, "steps": steps, "batch_size": 16, "lr": 0.05,
             "lr_weight_decay": 0.0}
    images = digits_task().splits["train"]
    path = tmp / "run.pt"

    def session():
        net = network(bb, point, num_classes=10, seed=0)
        calls = []
        if stop_after is not None and not path.exists():
            def stop(*_):
                calls.append(1)
                if len(calls) > stop_after:
                    raise Stop
            net.head.register_forward_hook(stop)
        train(net, images, point=point, preprocess=bb.preprocess, device=device, path=path, micro_batch=None,
              num_workers=0, checkpoint_every=stop_after or every, compile=False, desc="resume")
        return net

    if stop_after is not None:
        with pytest.raises(Stop):
            session()
        assert checkpoint.load(path)["step"] == stop_after
    return {k: v.detach().cpu() for k, v in session().state_dict().items()}


def weight_gap(a: dict, b: dict) -> float:
    return max((relative_gap(a[k].float(), b[k].float()) if b[k].abs().max() > 0 else float(a[k].abs().max()))
               for k in b if b[k].is_floating_point())


def test_a_resumed_run_ends_bit_identical_on_the_cpu(tmp_path):
    """On the CPU, the helper the CUDA test uses: stopped after step 3 of 8, resumed, bit-identical."""
    whole = finetune_run(tmp_path / "whole", torch.device("cpu"), steps=8)
    resumed = finetune_run(tmp_path / "resumed", torch.device("cpu"), steps=8, stop_after=3)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert weight_gap(resumed, whole) == 0.0


@cuda
def test_a_resumed_run_on_cuda_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, record_property):
    device = torch.device("cuda")
    deterministic, benchmark = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        torch.cuda.reset_peak_memory_stats(device)
        whole = finetune_run(tmp_path / "whole", device, steps=12)
        record_property("peak_memory_bytes", torch.cuda.max_memory_allocated(device))
        again = finetune_run(tmp_path / "again", device, steps=12)
        resumed = finetune_run(tmp_path / "resumed", device, steps=12, stop_after=5)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, benchmark
    floor, gap = weight_gap(again, whole), weight_gap(resumed, whole)
    record_property("uninterrupted_runs_gap", floor)
    record_property("resumed_gap", gap)
    if floor == 0.0:
        assert gap == 0.0, f"two uninterrupted runs are bit-identical, the resumed one differs by {gap:.2e}"
    else:
        assert gap <= RESUME_RTOL, f"resumed vs uninterrupted: {gap:.2e} (two uninterrupted runs: {floor:.2e})"


# ------------------------------------------------------------------------------------------ peak memory


@cuda
def test_a_run_on_cuda_records_its_peak_gpu_memory(tmp_path, record_property):
    seabench_in_process("run", "dataset=digits", "backbone=test_resnet", "method=sea", "seeds=1", "device=cuda",
                        "method.params.epochs=2", "method.grid.eta=[0.2]", "method.grid.center=[true]",
                        cwd=tmp_path, env=own_env(tmp_path))
    record = json.loads(next((tmp_path / "results").rglob("*.json")).read_text())
    cost = record["cost"]
    record_property("peak_memory_bytes", cost["peak_accelerator_memory_bytes"])
    assert cost["accelerator"] == torch.cuda.get_device_name()
    total = torch.cuda.get_device_properties(0).total_memory
    assert 0 < cost["peak_accelerator_memory_bytes"] < total
