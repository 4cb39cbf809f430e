"""A normalizing flow on features after PCA, fitted once per feature matrix and cached on disk.

The flow is zuko's RealNVP (affine coupling layers, Dinh et al. 2017): zuko is a small, maintained,
pure-PyTorch library whose flows are plain modules with an exact inverse (`transform.inv`); affine
coupling is the layer Glow, the flow of the official flow-lp code, is built from, and unlike an
autoregressive flow it inverts in one pass, which the method needs on every batch (normflows, the other
candidate, is not installed here and brings more than we use).

Pipeline: p = (x - mean) V (the top `dim` principal directions of the fitted features), u = p / scale
(whitened: each coordinate has unit variance, the flow's base distribution's), z = flow(u). The residual
x - mean - V p is not modelled: a perturbation changes p only, the residual is added back unchanged.
With `transforms` 0 there are no coupling layers: z = u, the PCA whitening alone (the `flow_linear`
ablation: the same perturbations through the flow's linear part only); nothing is trained.

A fit is cached under the sha256 of everything that changes it: the feature matrix's bytes and dtype,
the fit's settings, the code version and the zuko and torch versions. Entries are written to a temporary
name and renamed under a file lock; a damaged entry is fitted again.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import zuko
from filelock import FileLock
from tqdm import tqdm

from bench import UserError, digest, temps

log = logging.getLogger(__name__)

VERSION = 2  # bump when the fit below changes: it is part of every key
# the log of zuko's MonotonicAffineTransform's minimum slope, as RealNVP builds it (its default)
LOG_SLOPE = math.log(inspect.signature(zuko.transforms.MonotonicAffineTransform).parameters["slope"].default)


@dataclass
class Codec:
    """The PCA and the flow, in an order of the k coordinates that puts each coupling layer's two halves side
    by side: the flow's layers split the coordinates by alternating masks (zuko's RealNVP), so with the
    coordinates one mask leaves unchanged first and the others after, the two halves are two slices, kept
    apart through all the layers and joined once, where zuko's own transform gathers and scatters in every
    layer (half a decode's time). The math is zuko's: each layer's hyper-network is its own, its affine map
    zuko's written out (`passes`)."""

    mean: torch.Tensor  # [D]
    basis: torch.Tensor  # V [D, k], orthonormal columns, in the order below
    scale: torch.Tensor  # [k], the standard deviation of each principal coordinate
    flow: zuko.flows.Flow
    order: torch.Tensor  # the flow's coordinates in ours: ours[i] is the flow's order[i]
    first: int  # the coordinates of the first half
    kept_first: tuple[bool, ...]  # per layer, whether the half it keeps (conditions on) is the first

    @classmethod
    def ordered(cls, mean, basis, scale, flow) -> Codec:
        layers = flow.transform.transforms
        if not layers:  # whitening only: the coordinates in their own order, no halves
            return cls(mean, basis, scale, flow, torch.arange(len(scale), device=basis.device), len(scale), ())
        if any(layer.univariate is not zuko.transforms.MonotonicAffineTransform or layer.total != 2 for layer in layers):
            raise ValueError("the flow's layers must be zuko's affine couplings (RealNVP's)")
        masks = [layer.mask for layer in layers]
        if any(not (m.equal(masks[0]) or m.equal(~masks[0])) for m in masks):
            raise ValueError("the flow's coupling masks must alternate between two halves")
        order = torch.cat([(~masks[0]).nonzero().squeeze(1), masks[0].nonzero().squeeze(1)])
        kept_first = tuple(not bool(m[order[0]]) for m in masks)  # the first half is masks[0]'s False set
        order = order.to(basis.device)
        return cls(mean, basis[:, order], scale[order], flow, order, int((~masks[0]).sum()), kept_first)

    def coords(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.basis

    def passes(self, u: torch.Tensor, inverse: bool) -> torch.Tensor:
        """The coupling layers (or their inverses, in reverse) on u [..., k], the two halves kept apart until
        the end: each layer's kept half feeds its hyper-network, whose outputs (shift, unconstrained scale)
        map the other half by zuko's MonotonicAffineTransform, its operations written out (the same results
        to the bit, without building two transform objects per layer and call; tested against zuko)."""
        head, tail = u[..., :self.first], u[..., self.first:]
        layers = list(zip(self.flow.transform.transforms, self.kept_first))
        for layer, kept_first in reversed(layers) if inverse else layers:
            a, b = (tail, head) if kept_first else (head, tail)  # a: conditions, kept; b: transformed
            shift, s = layer.hyper(a).unflatten(-1, (-1, 2)).unbind(-1)
            log_scale = s / (1 + abs(s / LOG_SLOPE))
            b = (b - shift) / log_scale.exp() if inverse else b * log_scale.exp() + shift
            head, tail = (b, a) if kept_first else (a, b)
        return torch.cat((head, tail), dim=-1)

    def encode(self, p: torch.Tensor) -> torch.Tensor:
        return self.passes(p / self.scale, inverse=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.passes(z, inverse=True) * self.scale


def key(X: torch.Tensor, settings: dict) -> str:
    facts = {"version": VERSION, "zuko": zuko.__version__, "torch": torch.__version__, "settings": settings,
             "dtype": str(X.dtype), "shape": list(X.shape),
             "features": hashlib.sha256(X.detach().cpu().contiguous().numpy().tobytes()).hexdigest()}
    return digest(facts)


def principal(X: torch.Tensor, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mean [D], the top-`dim` principal directions [D, dim] and their standard deviations [dim], by a seeded
    randomized SVD of the centred features (torch.pca_lowrank: Halko et al. 2011, 10 extra directions, 4 power
    iterations; no centred copy of X is made). Any orthonormal basis would do for the method (the residual
    is added back), but these are the leading directions to float32 precision (tested against eigh), at a
    fraction of the cost of a full eigendecomposition (2048 dimensions: 0.1 s against 1.9 s)."""
    n, D = X.shape
    q = min(dim + 10, D, n)
    with torch.random.fork_rng(devices=[X.device] if X.device.type == "cuda" else []):
        torch.manual_seed(seed)
        _, s, V = torch.pca_lowrank(X, q=q, center=True, niter=4)
    return X.mean(0), V[:, :dim].contiguous(), (s[:dim] / n ** 0.5).clamp_min(1e-6)


def build(dim: int, *, transforms: int, hidden: int) -> zuko.flows.Flow:
    return zuko.flows.RealNVP(dim, transforms=transforms, hidden_features=(hidden, hidden))


def train_flow(U: torch.Tensor, *, transforms: int, hidden: int, epochs: int, batch_size: int, lr: float,
               seed: int, desc: str) -> tuple[zuko.flows.Flow, dict]:
    """A flow fitted by maximum likelihood (Adam) on the whitened coordinates U [N, k], in float32; with no
    coupling layers, nothing to fit (the likelihood is the standard normal's of U)."""
    U = U.float()
    if transforms == 0:
        flow = build(U.shape[1], transforms=0, hidden=hidden).to(U.device).eval()
        nll = 0.5 * (U.pow(2).mean().item() + math.log(2 * math.pi))
        return flow, {"epochs": 0, "final_nll_per_dim": round(nll, 5)}
    with torch.random.fork_rng(devices=[U.device] if U.device.type == "cuda" else []):
        torch.manual_seed(seed)  # the flow's initial weights, then its batches
        flow = build(U.shape[1], transforms=transforms, hidden=hidden).to(U.device)
        opt = torch.optim.Adam(flow.parameters(), lr=lr)
        bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=None)
        for _ in bar:
            total = 0.0
            for idx in torch.randperm(len(U), device=U.device).split(batch_size):
                loss = -flow().log_prob(U[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            bar.set_postfix(nll=f"{total / len(U) / U.shape[1]:.3f}")
    flow.requires_grad_(False).eval()
    with torch.no_grad():
        nll = torch.cat([-flow().log_prob(part) for part in U.split(8192)]).mean().item() / U.shape[1]
    if not math.isfinite(nll):
        raise UserError("the flow's fit diverged (non-finite likelihood); lower method.params.flow_lr")
    return flow, {"epochs": epochs, "final_nll_per_dim": round(nll, 5)}


def fit(X: torch.Tensor, *, dim: int, transforms: int, hidden: int, epochs: int, batch_size: int, lr: float,
        seed: int, cache_dir: Path | None) -> tuple[Codec, dict]:
    """The codec of X (from the cache when there is one) and a note of how it was obtained."""
    dim = min(dim, X.shape[1], len(X) - 1)
    if dim < 2:
        raise UserError(f"the flow needs at least 2 principal dimensions; these features give {dim}")
    settings = {"dim": dim, "transforms": transforms, "hidden": hidden, "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "seed": seed}
    digest, start = key(X, settings), time.perf_counter()
    path = None if cache_dir is None else Path(cache_dir).expanduser() / "flows" / f"{digest[:32]}.pt"
    entry = load(path, digest) if path else None
    if entry is None and path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            entry = load(path, digest)  # another job may have fitted it while we waited
            if entry is None:
                entry = fit_entry(X, digest, settings)
                save(path, entry)
    elif entry is None:
        entry = fit_entry(X, digest, settings)
    flow = build(dim, transforms=transforms, hidden=hidden)
    flow.load_state_dict(entry["flow"])
    flow = flow.to(X.device, X.dtype).requires_grad_(False).eval()
    codec = Codec.ordered(*(entry[k].to(X.device, X.dtype) for k in ("mean", "basis", "scale")), flow=flow)
    note = {"key": digest, "path": str(path) if path else None, "hit": entry.get("hit", False),
            "seconds": round(time.perf_counter() - start, 3), "rows": len(X), **entry["info"]}
    return codec, note


def fit_entry(X, digest: str, settings: dict) -> dict:
    """The fitted codec's tensors and `info`, which keeps the fit's own seconds (`fit_seconds`): a run that
    loads the entry from the cache reports what the fit cost when it was made (the table shares it)."""
    start = time.perf_counter()
    mean, basis, scale = principal(X, settings["dim"], settings["seed"])
    U = ((X - mean) @ basis) / scale
    flow, info = train_flow(U, **{k: settings[k] for k in ("transforms", "hidden", "epochs", "batch_size", "lr",
                                                            "seed")}, desc=f"flow fit ({len(X)} x {settings['dim']})")
    return {"key": digest, "mean": mean.cpu(), "basis": basis.cpu(), "scale": scale.cpu(),
            "flow": {k: v.cpu() for k, v in flow.state_dict().items()},
            "info": {**settings, **info, "fit_seconds": round(time.perf_counter() - start, 3)}}


def load(path: Path, digest: str) -> dict | None:
    if not path.exists():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(entry, dict) and entry.get("key") == digest:
            return {**entry, "hit": True}
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):
        pass
    log.warning("the flow cache entry %s is damaged; fitting again", path)
    path.unlink(missing_ok=True)
    return None


def save(path: Path, entry: dict) -> None:
    """Write atomically (bench.temps: a full disk or a read-only folder is one sentence)."""
    with temps.atomic(path, "flow cache entry") as tmp, open(tmp, "wb") as f:
        torch.save(entry, f)
