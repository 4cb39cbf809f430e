"""What method=finetune_flow costs per step on this machine: one Glow training step and one perturbed
fine-tuning step (latent PGD or random noise, decode, resize to the backbone's input, forward, backward, SGD)
beside a plain fine-tuning step, at a given Glow resolution:

    python benchmarks/flow_steps.py                                  # the official sizes, 32 px, this CPU
    python benchmarks/flow_steps.py --resolution 32 224 --device cuda   # the GPU check's figures
    python benchmarks/flow_steps.py --levels 2 --steps-per-level 4 --hidden 32 --resolution 8 \
        --arch resnet10t --input-size 64 --batch 32                  # the demo's sizes

`step_seconds(...)` is what benchmarks/gpu.py calls. A batch that does not fit in the accelerator's memory is
halved until it does (the figure says at which batch it was taken, and the per-image cost is what to scale
by). Each figure is the median of `repeats` steps after one warm-up step; nothing is asserted; the
CIFAR-10 estimate multiplies them by the official step counts (README "Flow perturbations on images").
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import yaml

from bench.finetune import loop, perturbation
from bench.finetune.glow import Glow
from bench.finetune.net import Net

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def flow_params() -> dict:
    """finetune_flow's params: finetune.yaml's, then finetune_flow.yaml's over them."""
    base = yaml.safe_load((CONF / "finetune.yaml").read_text())["params"]
    return {**base, **yaml.safe_load((CONF / "finetune_flow.yaml").read_text())["params"]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step, device: torch.device, repeats: int) -> float:
    step()  # warm-up: ActNorm's initialisation, cuDNN's choices, allocator growth
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fitting(measure, batch: int, device: torch.device) -> tuple[float, int]:
    """(seconds, batch) of `measure(batch)`, halving the batch while the accelerator runs out of memory."""
    while True:
        try:
            return measure(batch), batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()


def step_seconds(*, resolution: int, device: str | torch.device = "cpu", arch: str = "resnet50",
                 input_size: int = 224, batch: int = 64, levels: int = 3, steps_per_level: int = 32,
                 hidden: int = 512, modes: tuple[str, ...] = ("adv", "rand"), repeats: int = 3) -> dict:
    """Seconds of one Glow training step (official batch 64, Adamax) and of one fine-tuning step of `arch`
    at `input_size` px, plain and with each latent perturbation `mode` (finetune_flow.yaml's defaults: adv =
    3 L2 PGD steps), at Glow `resolution`; with the batch each was taken at."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    glow = Glow(levels=levels, steps=steps_per_level, hidden=hidden, seed=0).to(device).train()
    opt = torch.optim.Adamax(glow.parameters(), lr=5e-4, weight_decay=5e-5)

    def pixels(b: int, size: int) -> torch.Tensor:
        return (torch.randint(0, 256, (b, 3, size, size), generator=gen) / 255).to(device)

    def glow_step(b: int) -> float:
        x = pixels(b, resolution)

        def step():
            loss = glow.nll(x, torch.rand_like(x)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return median_seconds(step, device, repeats)

    out = {"resolution": resolution, "device": str(device), "arch": arch, "input_size": input_size,
           "glow": {"levels": levels, "steps_per_level": steps_per_level, "hidden": hidden,
                    "parameters": sum(p.numel() for p in glow.parameters())}}
    out["glow_step_s"], out["glow_batch"] = fitting(glow_step, batch, device)
    glow.eval().requires_grad_(False)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    net = Net(model, dim=model.num_features, num_classes=10, seed=0, afan_stage=None, augself_weights=None,
              augself_hidden=8, isda_cov=None).to(device).train()
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    sgd = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    pre = {"crop": input_size, "interpolation": "bicubic", "mean": MEAN, "std": STD}
    params, amp = flow_params(), loop.autocast_ok(device)

    def finetune_step(mode: str | None):
        def measure(b: int) -> float:
            point = copy.deepcopy(params) | {"seed": 0, "mode": mode or "rand",
                                             "glow": {**params["glow"], "resolution": resolution}}
            hook = perturbation.Latent(glow, point=point, preprocess=pre, amp=amp)
            x, y = pixels(b, resolution).unsqueeze(1), torch.arange(b, device=device) % 10

            def step():
                inputs = hook(net, x, step=0, micro=0) if mode else hook.to_input(x[:, 0]).unsqueeze(1)
                inputs = inputs[:, 0].contiguous(memory_format=torch.channels_last) if device.type == "cuda" \
                    else inputs[:, 0]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = F.cross_entropy(net(inputs).float(), y)
                sgd.zero_grad(set_to_none=True)
                loss.backward()
                sgd.step()
            return median_seconds(step, device, repeats)
        return measure

    out["finetune_step_s"], out["finetune_batch"] = fitting(finetune_step(None), batch, device)
    for mode in modes:
        out[f"finetune_flow_{mode}_step_s"], out[f"finetune_flow_{mode}_batch"] = \
            fitting(finetune_step(mode), batch, device)
    if device.type == "cuda":
        out["accelerator"] = torch.cuda.get_device_name(device)
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def cifar10_estimate(figures: dict, *, glow_steps: int = 195_500, finetune_steps: int = 5_000,
                     runs: int = 4 * 20 * 3 + 3) -> dict:
    """Hours of a CIFAR-10 finetune_flow cell at these per-step costs (scaled to batch 64 per image): the
    Glow's official 195,500 steps, and fine-tuning runs of 5,000 steps (the default grid: 4 mode x eps points
    x 20 lr x weight decay points x 3 seeds + 3 refits), half rand and half adv."""
    per64 = {k: figures[f"{k}_step_s"] * 64 / figures[f"{k}_batch"]
             for k in ("glow", "finetune", "finetune_flow_adv", "finetune_flow_rand") if f"{k}_step_s" in figures}
    run = finetune_steps * (per64["finetune_flow_adv"] + per64["finetune_flow_rand"]) / 2 / 3600
    return {"glow_hours": round(glow_steps * per64["glow"] / 3600, 2), "one_run_hours": round(run, 3),
            "grid_hours": round(runs * run, 1), "plain_run_hours": round(finetune_steps * per64["finetune"] / 3600, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[32])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--steps-per-level", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for resolution in args.resolution:
        figures = step_seconds(resolution=resolution, device=args.device, arch=args.arch, input_size=args.input_size,
                               batch=args.batch, levels=args.levels, steps_per_level=args.steps_per_level,
                               hidden=args.hidden, repeats=args.repeats)
        figures["load_average"] = os.getloadavg()
        if (args.levels, args.steps_per_level, args.hidden, args.arch) == (3, 32, 512, "resnet50"):
            figures["cifar10_estimate"] = cifar10_estimate(figures)
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
