"""Fine-tuning throughput on this machine, through the real training loop (views, forward, backward, step):

    python benchmarks/finetune.py                       # test_resnet, ResNet-10-T, ResNet-50: minutes
    python benchmarks/finetune.py --only resnet50 --steps 3

For each network: training images/s (first step excluded: it pays for start-up) and what a fine-tuning run
of the recipe's 5,000 steps of 64 images, and the whole default grid (20 points x 3 seeds + 3 refits),
would take at that speed. Images are random 256 x 256 RGB pictures (decoding is not what is measured).
Nothing here is asserted; the machine's load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from speed import method_config

from bench import backbones
from bench.finetune import loop, network

NETWORKS = {  # name -> (timm arch, input size, batch)
    "test_resnet": ("test_resnet", 32, 64),
    "resnet10t": ("resnet10t", 64, 64),  # the demo's random-init CNN at the demo's size
    "resnet50": ("resnet50", 224, 16),
}


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, classes: int = 10):
        gen = np.random.default_rng(0)
        self.images = [Image.fromarray(gen.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(n)]
        self.labels = [i % classes for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def images_per_second(name: str, *, steps: int, num_workers: int) -> tuple[float, int]:
    arch, size, batch = NETWORKS[name]
    pre = {"resize": size, "crop": size, "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225]}
    params, _ = method_config("finetune")
    with tempfile.TemporaryDirectory() as tmp:
        bb = backbones.create(name=name, arch=arch, source="random", preprocess=pre, cache_dir=Path(tmp))
        data = RandomImages(4 * batch)
        times, cpu = [], []
        for n in (1, 1 + steps):  # the difference of two runs: start-up and the first step cancel out
            point = copy.deepcopy(params) | {"seed": 0, "steps": n, "batch_size": batch}
            net = network(bb, point, num_classes=10, seed=0)
            start, start_cpu = time.perf_counter(), time.process_time()
            loop.train(net, data, point=point, preprocess=pre, device=torch.device("cpu"), path=Path(tmp) / f"{n}.pt",
                       micro_batch=None, num_workers=num_workers, checkpoint_every=10**9, compile=False, desc=name)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return steps * batch / (times[1] - times[0]), steps * batch / (cpu[1] - cpu[0]), batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(NETWORKS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network")
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    for name in [args.only] if args.only else list(NETWORKS):
        rate, per_cpu, batch = images_per_second(name, steps=args.steps, num_workers=args.num_workers)
        # a shared machine gives this process a fraction of its cores: the CPU-time rate times the cores
        # is what the machine would do alone (an upper bound: threads do not scale perfectly)
        alone = per_cpu * torch.get_num_threads()
        print(f"{name:12s} batch {batch:3d} at {NETWORKS[name][1]} px: {rate:8.2f} training images/s "
              f"({per_cpu:.2f} per CPU-second, <= {alone:.2f}/s on {torch.get_num_threads()} idle cores); 5,000 steps "
              f"x 64 images: {5000 * 64 / rate / 3600:.1f} h at the measured rate, >= {5000 * 64 / alone / 3600:.1f} h "
              f"idle; default grid (63 runs): >= {63 * 5000 * 64 / alone / 86400:.1f} days idle")


if __name__ == "__main__":
    main()
