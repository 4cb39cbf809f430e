"""benchmarks/gpu.py's sections that push images through a network: extraction (from JPEG files through
seabench's loader and cache, the bare model, decoding on the GPU) and fine-tuning throughput (a bare step with
and without channels_last and torch.compile, the real loop); and the device's timing helpers."""

from __future__ import annotations

import functools
import logging
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from speed import method_config

from bench import backbones, features
from bench.data import ImageList, read_rgb

if TYPE_CHECKING:
    from gpu import Report

log = logging.getLogger("gpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------- extraction


@functools.cache
def photographs() -> list[np.ndarray]:
    """scikit-learn's two bundled photographs (china.jpg, flower.jpg: 427 x 640 x 3 uint8, no network)."""
    from sklearn.datasets import load_sample_images

    return load_sample_images().images


def write_jpeg(job: tuple[int, str, int, int]) -> None:
    """One JPEG of height x width: a random crop of one of scikit-learn's two photographs, resized."""
    from PIL import Image

    i, path, height, width = job
    photos = photographs()
    gen = np.random.default_rng(i)
    photo = photos[i % len(photos)]
    h = int(gen.integers(160, photo.shape[0] + 1))
    w = min(photo.shape[1], int(h * width / height))
    top, left = int(gen.integers(0, photo.shape[0] - h + 1)), int(gen.integers(0, photo.shape[1] - w + 1))
    image = Image.fromarray(photo[top:top + h, left:left + w]).resize((width, height), Image.BICUBIC)
    image.save(path, quality=90)


def write_jpegs(folder: Path, count: int, size: tuple[int, int], workers: int) -> ImageList:
    jobs = [(i, str(folder / f"{i:05d}.jpg"), *size) for i in range(count)]
    if workers <= 1 or count < 256:  # a pool's start costs more than a few files
        list(map(write_jpeg, jobs))
    else:
        with ProcessPoolExecutor(min(workers, 16)) as pool:
            list(pool.map(write_jpeg, jobs, chunksize=64))
    return ImageList([j[1] for j in jobs], [i % 10 for i in range(count)], read_rgb, source=str(folder))


def gpu_decode_rate(paths: list[str], model, pre: dict, *, batch: int, device: torch.device) -> float:
    """images/s of reading the files, decoding them with torchvision.io.decode_jpeg on `device`, resizing
    (bicubic, antialiased), cropping and normalising there, then the model (float16 autocast on a GPU)."""
    from torchvision.io import decode_jpeg

    mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1) * 255
    amp = features.uses_amp(device)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            for i in range(0, len(paths), batch):
                data = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8) for p in paths[i:i + batch]]
                x = torch.stack(decode_jpeg(data, device=device)).float()  # the files share one size
                h, w = x.shape[-2:]
                s = pre["resize"] / min(h, w)
                x = torch.nn.functional.interpolate(x, size=(round(h * s), round(w * s)), mode="bicubic",
                                                    antialias=True, align_corners=False)
                top, left = (x.shape[-2] - pre["crop"]) // 2, (x.shape[-1] - pre["crop"]) // 2
                x = ((x[..., top:top + pre["crop"], left:left + pre["crop"]] - mean) / std)
                model(x.contiguous(memory_format=torch.channels_last)).float().cpu()

    run()  # warm-up: the decoder's and cuDNN's first calls
    return len(paths) / timed(run, device)


def bench_extraction(args, size: dict, device: torch.device, report: Report, tmp: Path) -> float:
    pre = {"resize": size["input"], "crop": size["input"], "interpolation": "bicubic",
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    (tmp / "images").mkdir()
    start = time.perf_counter()
    images = write_jpegs(tmp / "images", size["images"], size["jpeg"], args.workers)
    written = time.perf_counter() - start
    bb = backbones.create(name=size["arch"], arch=size["arch"], source="random", preprocess=pre, cache_dir=tmp)
    batch = args.batch_size
    what = (f"{size['images']} JPEG files {size['jpeg'][1]}x{size['jpeg'][0]} (written in {written:.1f} s), timm "
            f"{size['arch']} random init, input {size['input']}, batch {batch}")

    def cached(workers: int, name: str):
        return features.cached(bb, name, "train", images, cache_dir=tmp / "cache", batch_size=batch,
                               num_workers=workers, device=device)

    cached(args.workers, "warm-up")  # cuDNN's algorithm search and the first allocations
    rates = {}
    for workers in dict.fromkeys([args.workers, args.config_workers]):
        seconds = timed(lambda w=workers: cached(w, f"run-{w}"), device)
        rates[workers] = size["images"] / seconds
    model = bb.model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size["input"], size["input"], device=device).contiguous(
        memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)

    def bare():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16,
                                                    enabled=features.uses_amp(device)):
            for _ in range(0, size["images"], batch):
                model(x).float().cpu()

    bare()
    rate_bare = size["images"] / statistics.median(timed(bare, device) for _ in range(3))
    e2e = rates[args.workers]
    report.add("extraction_images_per_s", e2e, "images/s", f"bench.features.cached (loader, {args.workers} workers, "
               f"extraction, cache write) over {what}", bare_model_images_per_s=rate_bare, ratio=e2e / rate_bare,
               target=">= 0.8x of the bare model", verdict="PASS" if e2e >= 0.8 * rate_bare else "MISS")
    report.add("extraction_bare_images_per_s", rate_bare, "images/s", "the bare model's forward pass on a batch "
               "already on the device (float16 autocast and channels_last on a GPU)")
    report.add("extraction_config_workers_images_per_s", rates[args.config_workers], "images/s",
               f"as extraction_images_per_s with conf/config.yaml's extract.num_workers = {args.config_workers}")
    try:  # the alternative; its failure (an older torchvision, no nvJPEG) leaves the figures above standing
        gpu = gpu_decode_rate(images.items, model, pre, batch=batch, device=device)
    except Exception as err:
        log.exception("decoding on the device failed")
        report.data["errors"]["extraction_gpu_decode"] = f"{type(err).__name__}: {err}"
        return e2e
    report.add("extraction_gpu_decode_images_per_s", gpu, "images/s", "read the files, decode_jpeg on "
               f"{device.type}, resize + crop + normalise there, then the model: the alternative to the loader",
               ratio=gpu / rate_bare)
    return e2e


# ----------------------------------------------------------------------------------------------- fine-tuning


def step_rate(arch: str, size: dict, device: torch.device, *, channels_last: bool, compiled: bool,
              backend: str) -> tuple[float, float]:
    """(training images/s, seconds of the first 3 steps: compilation, cuDNN's search) of a bare step: forward,
    cross-entropy, backward, SGD Nesterov, on one batch already on the device, bfloat16 autocast on a GPU."""
    import timm

    from bench.finetune.loop import autocast_ok

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=101).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    run = torch.compile(model, backend=backend) if compiled else model
    x = torch.randn(size["ft_batch"], 3, size["input"], size["input"], device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 101, (size["ft_batch"],), device=device)

    def steps(k: int):
        for _ in range(k):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_ok(device)):
                loss = torch.nn.functional.cross_entropy(run(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    first = timed(lambda: steps(3), device)
    return size["ft_steps"] * size["ft_batch"] / timed(lambda: steps(size["ft_steps"]), device), first


def loop_rate(args, size: dict, device: torch.device, tmp: Path) -> float:
    """Training images/s of bench.finetune.loop.train (views in --workers loader processes from 256 px
    pictures, forward, backward, step; channels_last and bfloat16 on a GPU, eager), over its steps after the
    first (which pays for the loader's start and cuDNN's search): a hook on the head notes when each step's
    forward pass reaches it (after a synchronisation, so the GPU's queue is counted)."""
    from finetune import RandomImages

    from bench.finetune import loop, network

    pre = {"resize": size["input"], "crop": size["input"], "interpolation": "bicubic",
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    params, _ = method_config("finetune")
    bb = backbones.create(name=size["arch"], arch=size["arch"], source="random", preprocess=pre, cache_dir=tmp)
    point = params | {"seed": 0, "steps": 1 + size["loop_steps"], "batch_size": size["ft_batch"]}
    net, stamps = network(bb, point, num_classes=10, seed=0), []

    def stamp(*_):
        sync(device)
        stamps.append(time.perf_counter())

    net.head.register_forward_hook(stamp)
    loop.train(net, RandomImages(4 * size["ft_batch"]), point=point, preprocess=pre, device=device,
               path=tmp / "loop.pt", micro_batch=None, num_workers=args.workers, checkpoint_every=10**9,
               compile=False, desc="loop")
    return size["loop_steps"] * size["ft_batch"] / (stamps[-1] - stamps[0])


def bench_finetune(args, size: dict, device: torch.device, report: Report, tmp: Path, left) -> float:
    what = f"timm {size['arch']} random init, {size['input']} px, batch {size['ft_batch']}, {size['ft_steps']} steps"
    loop = loop_rate(args, size, device, tmp)
    report.add("finetune_loop_images_per_s", loop, "images/s", "bench.finetune.loop.train as a run calls it "
               f"(views from 256 px pictures in {args.workers} loader workers, channels_last and bfloat16 on a "
               f"GPU, no torch.compile), {size['arch']}, {size['input']} px, batch {size['ft_batch']}")
    # the compiled ones last (a compilation takes a minute or more), the loop's own layout (channels_last) first
    for compiled, cl in ((False, False), (False, True), (True, True), (True, False)):
        name = f"finetune_step{'_channels_last' if cl else ''}{'_compiled' if compiled else ''}_images_per_s"
        if compiled and left() < args.compile_reserve_s:
            report.data["skipped"].append(f"{name}: {left():.0f} s left, a compilation needs "
                                          f"--compile-reserve-s {args.compile_reserve_s}")
            print(f"[{name}] skipped: {left():.0f} s left of the budget", flush=True)
            continue
        rate, first = step_rate(size["arch"], size, device, channels_last=cl, compiled=compiled,
                                backend=size["compile_backend"])
        report.add(name, rate, "images/s", f"a bare training step ({what}), channels_last {cl}, torch.compile "
                   f"{compiled}" + (f" (backend {size['compile_backend']})" if compiled else ""),
                   first_3_steps_seconds=first)
    return loop
