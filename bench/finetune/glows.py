"""Trained Glows (bench.finetune.glow) for method=finetune_flow: one per (train split, settings), trained by
maximum likelihood on the train split's images and kept in a content-addressed cache.

The recipe is the official one (okyksl/flow-lp, conf/hparams/cifar10_glow.yaml): Adamax, lr 5e-4, weight
decay 5e-5, batch 64, the learning rate ramped linearly from 0 over the first 500,000 images then constant,
no gradient clipping, the loss the mean negative log-likelihood in nats per image. Its images: each train
image resized to `resolution` x `resolution` (bicubic) and flipped at random (bench.finetune.views with the
whole image as the crop; the official CIFAR loader also pads by 4 and crops at random). Bits per dimension
on the val split (resized, not flipped, one seeded dequantisation) are reported and kept with the entry.

An entry's key is the sha256 of what changes the Glow: the train split's fingerprint and source, the val
split's fingerprint (its bits/dim travel with the entry), the settings (resolution, architecture, steps,
batch, optimiser, seed) and this code's version. Training is resumable: a checkpoint (weights, optimiser,
schedule, step, seconds so far) is written atomically every `checkpoint_every` steps and at a SIGTERM; the
data of a step and its dequantisation noise depend only on the seed and the step, so a run resumed after
kill -9 ends with the weights of an uninterrupted one. The entry is written atomically under a file lock
(a second job waits, then reads it); a damaged entry or checkpoint is removed and made again.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from pathlib import Path

import torch
from filelock import FileLock
from torch.utils.data import DataLoader
from torchvision import transforms
from tqdm import tqdm

from bench import UserError, digest, temps
from bench.data import ImageList
from bench.finetune import checkpoint
from bench.finetune.glow import Glow, bits_per_dim
from bench.finetune.views import Steps, Views

log = logging.getLogger(__name__)

VERSION = 1  # bump when training changes: it is part of every key
KEYS = ("resolution", "levels", "steps_per_level", "hidden", "train_steps", "batch_size", "lr", "weight_decay",
        "warmup_images", "seed")


def check(settings: dict) -> None:
    """One sentence for Glow settings that would fail only after minutes of work."""
    if missing := [k for k in KEYS if k not in settings]:
        raise UserError(f"method.params.glow lacks {', '.join(missing)}")
    for k in ("resolution", "levels", "steps_per_level", "hidden", "train_steps", "batch_size"):
        if not isinstance(settings[k], int) or isinstance(settings[k], bool) or settings[k] < 1:
            raise UserError(f"method.params.glow.{k} must be a positive integer, not {settings[k]!r}")
    if not isinstance(settings["seed"], int) or isinstance(settings["seed"], bool) or settings["seed"] < 0:
        raise UserError(f"method.params.glow.seed must be a non-negative integer, not {settings['seed']!r}")
    side = 2 ** settings["levels"]
    if settings["resolution"] % side:
        raise UserError(f"method.params.glow.resolution must be a multiple of 2 ** levels = {side} (each level "
                        f"halves the side), not {settings['resolution']}")
    for k, low in (("lr", 0.0), ("weight_decay", None), ("warmup_images", None)):
        v = settings[k]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (low is not None and v <= low):
            raise UserError(f"method.params.glow.{k} must be a {'positive' if low is not None else 'non-negative'} "
                            f"number, not {v!r}")


def build(settings: dict) -> Glow:
    return Glow(levels=settings["levels"], steps=settings["steps_per_level"], hidden=settings["hidden"],
                seed=settings["seed"])


def key(train: ImageList, val: ImageList | None, settings: dict) -> str:
    return digest({"version": VERSION, "train": train.fingerprint(), "source": train.source,
                   "val": val.fingerprint() if val is not None else None,
                   "settings": {k: settings[k] for k in KEYS}})


def noise_for(x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """The dequantisation noise U[0, 1) of a training step: a function of the seed and the step only."""
    gen = torch.Generator(device=x.device).manual_seed((seed * 1_000_003 + step) % 2**63)
    return torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def trained(train: ImageList, val: ImageList | None, *, settings: dict, cache_dir: Path, device: torch.device,
            checkpoint_every: int, num_workers: int) -> tuple[Glow, dict]:
    """The Glow of these settings on `train` (from the cache, or trained now and stored), frozen, on `device`;
    and a note for the record: key, whether it was a cache hit, this call's seconds and images, the
    training's own seconds and device, bits/dim on val."""
    check(settings)
    start, name = time.perf_counter(), key(train, val, settings)
    folder = temps.make_dir(Path(cache_dir).expanduser() / "glows", "Glow cache folder")
    path = folder / f"{name[:32]}.pt"
    entry, hit = read(path, name), True
    if entry is None:
        with FileLock(str(path) + ".lock"):
            entry = read(path, name)  # another job may have trained it while we waited
            if entry is None:
                hit = False
                entry = fit(train, val, settings, device=device, path=folder / f"{name[:32]}.checkpoint.pt",
                            key=name, checkpoint_every=checkpoint_every, num_workers=num_workers)
                with temps.atomic(path, "Glow cache entry") as tmp, open(tmp, "wb") as f:
                    torch.save(entry, f)
                (folder / f"{name[:32]}.checkpoint.pt").unlink(missing_ok=True)
    glow = build(settings)
    glow.load_state_dict(entry["state"])
    glow = glow.to(device).eval().requires_grad_(False)
    info = entry["info"]
    note = {**info, "key": name, "path": str(path), "cached": hit,
            "seconds": round(time.perf_counter() - start, 3), "images": 0 if hit else info["training_images"]}
    log.info("Glow %s: bits/dim %.3f on val (%s)", name[:12], info["bits_per_dim_val"] or math.nan,
             "cache hit" if hit else f"trained in {info['training_seconds']:.0f} s")
    return glow, note


def read(path: Path, name: str) -> dict | None:
    if not path.exists():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(entry, dict) and entry.get("key") == name:
            return entry
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):
        pass
    log.warning("the Glow cache entry %s is damaged; training again", path)
    path.unlink(missing_ok=True)
    return None


def fit(train: ImageList, val: ImageList | None, settings: dict, *, device: torch.device, path: Path, key: str,
        checkpoint_every: int, num_workers: int) -> dict:
    """Train by maximum likelihood (module docstring), resuming from the checkpoint at `path` if any."""
    steps, batch, seed, side = (settings[k] for k in ("train_steps", "batch_size", "seed", "resolution"))
    glow = build(settings).to(device).train()
    opt = torch.optim.Adamax(glow.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    warm = settings["warmup_images"] / batch  # the official warm-up is in images, converted to steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / warm) if warm > 0 else 1.0)
    state, step, spent = checkpoint.load(path), 0, 0.0
    if state is not None and state.get("key") == key:
        glow.load_state_dict(state["glow"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, spent = state["step"], state["seconds"]
        log.info("Glow %s: resuming from step %d of %d (%s)", key[:12], step, steps, path)
    images = Views(train, views=1, size=side, interpolation="bicubic", mean=None, std=None, scale=[1.0, 1.0],
                   jitter=None)  # the whole image, resized, flipped at random
    loader = DataLoader(images, num_workers=num_workers, pin_memory=device.type == "cuda",
                        batch_sampler=Steps(len(train), batch_size=batch, micro_batch=batch, steps=steps,
                                            start=step, seed=seed))
    start, recent = time.perf_counter(), []

    def save():
        checkpoint.save(path, {"key": key, "step": step, "glow": glow.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "seconds": spent + time.perf_counter() - start})

    bar = tqdm(total=steps, initial=step, desc=f"Glow {side}px", unit="step", disable=None, leave=False)
    with checkpoint.sigterm_noted() as sigterm:
        for x, _, _ in loader:
            x = x[:, 0].to(device, non_blocking=True)
            loss = glow.nll(x, noise_for(x, seed, step)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            recent = (recent + [loss.item()])[-50:]
            bar.set_postfix(bpd=f"{bits_per_dim(torch.tensor(recent).mean(), x[0].numel()):.3f}", refresh=False)
            bar.update(1)
            if not math.isfinite(recent[-1]):
                raise UserError(f"the Glow's training diverged at step {step} (non-finite likelihood); lower "
                                "method.params.glow.lr")
            if sigterm["at"]:
                save()
                raise checkpoint.Preempted(f"Glow training stopped by SIGTERM at step {step} of {steps}; the "
                                           f"checkpoint {path} is written and the same command resumes from it")
            if step % checkpoint_every == 0 and step < steps:
                save()
    bar.close()
    glow.eval()
    dims = 3 * side * side
    info = {**{k: settings[k] for k in KEYS}, "training_images": steps * batch, "device": str(device),
            "training_seconds": round(spent + time.perf_counter() - start, 3),
            "bits_per_dim_train": round(float(bits_per_dim(torch.tensor(recent).mean(), dims)), 4) if recent else None,
            "bits_per_dim_val": evaluate(glow, val, side=side, seed=seed, device=device) if val is not None else None,
            "parameters": sum(p.numel() for p in glow.parameters())}
    return {"key": key, "state": {k: v.cpu() for k, v in glow.state_dict().items()}, "info": info}


@torch.no_grad()
def evaluate(glow: Glow, images: ImageList, *, side: int, seed: int, device: torch.device, batch: int = 256) -> float:
    """Bits per dimension of the images (resized to side x side, one dequantisation drawn from `seed`)."""
    glow.eval()
    prepare = transforms.Compose([transforms.Resize(side, interpolation=transforms.InterpolationMode.BICUBIC),
                                  transforms.CenterCrop(side), transforms.ToTensor()])
    loader = DataLoader(images.with_transform(prepare), batch_size=batch, shuffle=False)
    total, count = 0.0, 0
    for k, (x, _) in enumerate(loader):
        x = x.to(device)
        total += float(glow.nll(x, noise_for(x, seed + 1, k)).sum())
        count += len(x)
    return round(float(bits_per_dim(torch.tensor(total / count), 3 * side * side)), 4)
