"""One fine-tuning run: a backbone + linear head trained end to end for a fixed number of steps.

SGD with Nesterov momentum, cosine schedule to zero over `steps` (ssl-transfer, Ericsson et al. 2021),
weight decay on every parameter. A step is `batch_size` images, fed in micro-batches of `micro_batch`
whose gradients are accumulated, so the optimisation does not depend on what fits in memory (BatchNorm's
batch statistics do: they are per micro-batch). On a GPU: bfloat16 autocast where supported,
channels_last, optionally torch.compile. Resumable: see bench.finetune.checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bench.finetune import afan, augself, checkpoint, isda
from bench.finetune.net import Net, trainable
from bench.finetune.views import Steps, Views

log = logging.getLogger(__name__)


def autocast_ok(device: torch.device) -> bool:
    """bfloat16 autocast on GPUs that support it; float32 elsewhere (CPUs included)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def pieces(net: Net, compiled: bool):
    """(front, back, head) as the loop calls them: the backbone whole (front None) unless A-FAN splits it."""
    wrap = torch.compile if compiled else (lambda m: m)
    if net.front is None:
        return None, wrap(net.backbone), net.head
    return wrap(net.front), wrap(net.back), net.head


def micro_loss(net: Net, parts, x, params, y, *, point: dict, n_train: int, step: int):
    """The loss of one micro-batch: x [m, V, 3, H, W] (V views), params [m, V, 9], y [m]."""
    front, back, head = parts
    m, views = x.shape[:2]
    x = x.transpose(0, 1).reshape(m * views, *x.shape[2:])  # view-major: rows [v * m, (v + 1) * m) are view v
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = y.repeat(views)
    h = front(x) if front is not None else None
    features = back(h if front is not None else x)
    logits = head(features)
    if net.estimator is not None:
        net.estimator.update(features.float(), labels)
        lam = isda.ratio(lambda0=point["isda"]["lambda0"], step=step, steps=point["steps"],
                         batch_size=point["batch_size"], n=n_train)
        loss = isda.loss(logits.float(), head.weight, net.estimator.cov, labels, lam)
    else:
        loss = F.cross_entropy(logits.float(), labels)
    if front is not None:
        a = point["afan"]
        loss = afan.combined_loss(loss, h, labels, back=back, head=head, steps=a["steps"], gamma=a["gamma"],
                                  eps=a["eps"], reinject_strengths=a["reinject"])
    if net.predictors is not None:
        s = point["augself"]
        loss = loss + augself.loss(net.predictors, features[:m].float(), features[m:].float(), params[:, 0],
                                   params[:, 1], weights=s["weights"], jitter=point["views"]["jitter"])
    return loss


def recipe(point: dict, preprocess: dict) -> dict:
    """The training views: the backbone's input size, interpolation and normalisation; the point's `views`
    (how many per image, AugSelf's jitter, grayscale and blur)."""
    v = point["views"]
    return {"views": v["count"], "size": preprocess["crop"], "interpolation": preprocess["interpolation"],
            "mean": preprocess["mean"], "std": preprocess["std"], "scale": point["crop_scale"],
            "jitter": v["jitter"], "grayscale": v["grayscale"], "blur": v["blur"]}


def build(net: Net, point: dict):
    opt = torch.optim.SGD(trainable(net), lr=point["lr"], momentum=point["momentum"],
                          nesterov=point["nesterov"], weight_decay=point["lr_weight_decay"] / point["lr"])
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=point["steps"])


def train(net: Net, images: Dataset, *, point: dict, preprocess: dict, device: torch.device, path: Path,
          micro_batch: int | None, num_workers: int, checkpoint_every: int, compile: bool, desc: str,
          perturb=None) -> dict:
    """Train `net` in place for point["steps"] steps, resuming from `path` when a checkpoint is there;
    return the cost: wall seconds (summed over resumed sessions), images and steps. `perturb`: a hook that
    sets the views' recipe and changes each micro-batch (bench.finetune.perturbation.Latent)."""
    cuda, amp = device.type == "cuda", autocast_ok(device)
    net.to(device)
    if cuda:
        net.to(memory_format=torch.channels_last)
    opt, sched = build(net, point)
    state = checkpoint.load(path)
    step, spent = 0, 0.0
    if state is not None:
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        checkpoint.set_rng_states(state["rng"])
        step, spent = state["step"], state["seconds"]
        log.info("%s: resuming from step %d of %d (%s)", desc, step, point["steps"], path)
    steps, batch = point["steps"], point["batch_size"]
    micro = min(micro_batch or batch, batch)
    views = recipe(point, preprocess) if perturb is None else perturb.views(recipe(point, preprocess))
    loader = DataLoader(Views(images, **views), num_workers=num_workers, pin_memory=cuda,
                        batch_sampler=Steps(len(images), batch_size=batch, micro_batch=micro, steps=steps,
                                            start=step, seed=point["seed"]))
    parts, per_step = pieces(net, compile), math.ceil(batch / micro)
    net.train()
    start, done_here, total = time.perf_counter(), 0, 0.0

    def save():
        checkpoint.save(path, {"step": step, "net": net.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "rng": checkpoint.rng_states(),
                               "seconds": spent + time.perf_counter() - start, "point": point})

    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", disable=None, leave=False)
    with checkpoint.sigterm_noted() as sigterm:
        for i, (x, params, y) in enumerate(loader):
            x, params, y = x.to(device, non_blocking=True), params.to(device), y.to(device)
            if perturb is not None:
                x = perturb(net, x, step=step, micro=i % per_step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = micro_loss(net, parts, x, params, y, point=point, n_train=len(images), step=step)
            (loss * (len(y) / batch)).backward()
            total += loss.detach() * (len(y) / batch)
            if (i + 1) % per_step:
                continue
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step, done_here = step + 1, done_here + 1
            if step % 10 == 0 or step == steps:
                rate = done_here * batch * views["views"] / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{float(total):.3f}", img_s=f"{rate:.1f}", step=step, refresh=False)
            total = 0.0
            bar.update(1)
            if sigterm["at"]:
                save()
                raise checkpoint.Preempted(f"{desc}: stopped by SIGTERM at step {step} of {steps}; the "
                                           f"checkpoint {path} is written and the same command resumes from it")
            if step % checkpoint_every == 0 or step == steps:
                save()
    bar.close()
    finite = all(bool(torch.isfinite(p).all()) for p in net.parameters())
    if not finite:  # an lr too large: val scores the point (its predictions are junk) and the record says so
        log.warning("%s: the weights became NaN or infinite (lr %g)", desc, point["lr"])
    seconds = spent + time.perf_counter() - start
    return {"seconds": round(seconds, 3), "images": steps * batch * views["views"], "steps": steps,
            "finite": finite}
