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
        times = []
        for n in (1, 1 + steps):  # the difference of two runs: start-up and the first step cancel out
            point = copy.deepcopy(params) | {"seed": 0, "steps": n, "batch_size": batch}
            net = network(bb, point, num_classes=10, seed=0)
            start = time.perf_counter()
            loop.train(net, data, point=point, preprocess=pre, device=torch.device("cpu"), path=Path(tmp) / f"{n}.pt",
                       micro_batch=None, num_workers=num_workers, checkpoint_every=10**9, compile=False, desc=name)
            times.append(time.perf_counter() - start)
    return steps * batch / (times[1] - times[0]), batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(NETWORKS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network")
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    for name in [args.only] if args.only else list(NETWORKS):
        rate, batch = images_per_second(name, steps=args.steps, num_workers=args.num_workers)
        run = 5000 * 64 / rate
        grid = run * (20 * 3 + 3)
        print(f"{name:12s} batch {batch:3d} at {NETWORKS[name][1]} px: {rate:8.1f} training images/s; "
              f"5,000 steps x 64 images: {run / 3600:8.1f} h; default grid (63 runs): {grid / 86400:7.1f} days")


if __name__ == "__main__":
    main()
