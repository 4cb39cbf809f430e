"""AugSelf's auxiliary task end to end (Lee et al., NeurIPS 2021; official code hankook/AugSelf).

Two views of each image; from the concatenated pooled features of the two views, one MLP per target
(Linear(2D, 512) BN ReLU, Linear(512, 512) BN ReLU, Linear(512, k): no BN or ReLU on the last) predicts
the difference of the views' augmentation parameters:
- `crop` (k = 4): centre y, centre x (mirrored, 1 - x, on a flipped view), height, width of the crop,
  as fractions of the image. The official code mirrors both views' centres with the first view's flip
  (`center2[f1, 1]`), a slip we do not copy: each view is mirrored by its own flip.
- `color` (k = 4): brightness, contrast, saturation factors minus 1 and the hue shift, each divided by
  the width of its jitter range (0.8, 0.8, 0.8, 0.2 for jitter 0.4, 0.4, 0.4, 0.1); zeros where the jitter
  was not applied.
Loss: MSE(tanh(p), target) both ways round (features (v1, v2) predict params(v1) - params(v2), and
(v2, v1) the opposite), weighted by lambda per target (0.5 each, the official ImageNet-100 run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.finetune.views import PARAMS

TARGETS = ("crop", "color")
COLOR = ("brightness", "contrast", "saturation", "hue")


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, dim_out))


def heads(dim: int, *, weights: dict[str, float], hidden: int) -> nn.ModuleDict:
    """One MLP per target with a positive weight."""
    return nn.ModuleDict({t: mlp(2 * dim, hidden, 4) for t in TARGETS if weights.get(t, 0) > 0})


def describe(params: torch.Tensor, jitter: dict) -> dict[str, torch.Tensor]:
    """Per view [B, len(PARAMS)] -> the targets' quantities [B, 4] before differencing."""
    col = {name: params[:, i] for i, name in enumerate(PARAMS)}
    cy = col["top"] + col["height"] / 2
    cx = col["left"] + col["width"] / 2
    cx = torch.where(col["flip"] > 0.5, 1 - cx, cx)
    width = {"brightness": 2 * jitter["brightness"], "contrast": 2 * jitter["contrast"],
             "saturation": 2 * jitter["saturation"], "hue": 2 * jitter["hue"]}
    color = [(col[k] - (0.0 if k == "hue" else 1.0)) / width[k] for k in COLOR]
    return {"crop": torch.stack([cy, cx, col["height"], col["width"]], 1), "color": torch.stack(color, 1)}


def targets(params1: torch.Tensor, params2: torch.Tensor, jitter: dict) -> dict[str, torch.Tensor]:
    """params(view 1) - params(view 2) per target, [B, 4]."""
    a, b = describe(params1, jitter), describe(params2, jitter)
    return {t: a[t] - b[t] for t in TARGETS}


def loss(predictors: nn.ModuleDict, z1: torch.Tensor, z2: torch.Tensor, params1: torch.Tensor,
         params2: torch.Tensor, *, weights: dict[str, float], jitter: dict) -> torch.Tensor:
    z = torch.cat([torch.cat([z1, z2], 1), torch.cat([z2, z1], 1)])
    forward = targets(params1, params2, jitter)
    total = z.new_zeros(())
    for name, predictor in predictors.items():
        target = torch.cat([forward[name], -forward[name]]).to(z.dtype)
        total = total + weights[name] * F.mse_loss(torch.tanh(predictor(z)), target)
    return total
