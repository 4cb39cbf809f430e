"""AugSelf's auxiliary task end to end (Lee et al., NeurIPS 2021; official code hankook/AugSelf).

Two views of each image; from the concatenated pooled features of the two views, one MLP per target
(Linear(2D, 512) BN ReLU, Linear(512, 512) BN ReLU, Linear(512, k): no BN or ReLU on the last) predicts
the difference of the views' augmentation parameters:
- `crop` (k = 4): centre y, centre x, height, width of the crop, as fractions of the image; as the official
  code (`transforms.extract_diff`), both views' centres are expressed in the first view's frame: mirrored
  (x -> 1 - x) by the FIRST view's flip, and the reverse direction (view 2 first) by the second view's.
- `color` (k = 4): brightness, contrast, saturation factors minus 1 and the hue shift, each divided by
  the width of its jitter range (0.8, 0.8, 0.8, 0.2 for jitter 0.4, 0.4, 0.4, 0.1); zeros where the jitter
  was not applied.
Loss: MSE(tanh(p), target) both ways round (features (v1, v2) predict diff(v1, v2), and (v2, v1) predict
diff(v2, v1), which is not -diff(v1, v2) when the flips differ: the official `prepare_training_batch`),
weighted by lambda per target (0.5 each, the official ImageNet-100 run).
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


def describe(params: torch.Tensor, jitter: dict, frame_flip: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per view [B, len(PARAMS)] -> the targets' quantities [B, 4] before differencing; the crop centre's x
    mirrored where `frame_flip` [B] (the flip of the view whose frame the centres are expressed in) is set."""
    col = {name: params[:, i] for i, name in enumerate(PARAMS)}
    cy = col["top"] + col["height"] / 2
    cx = col["left"] + col["width"] / 2
    cx = torch.where(frame_flip > 0.5, 1 - cx, cx)
    width = {"brightness": 2 * jitter["brightness"], "contrast": 2 * jitter["contrast"],
             "saturation": 2 * jitter["saturation"], "hue": 2 * jitter["hue"]}
    color = [(col[k] - (0.0 if k == "hue" else 1.0)) / width[k] for k in COLOR]
    return {"crop": torch.stack([cy, cx, col["height"], col["width"]], 1), "color": torch.stack(color, 1)}


def targets(params1: torch.Tensor, params2: torch.Tensor, jitter: dict) -> dict[str, torch.Tensor]:
    """params(view 1) - params(view 2) per target, [B, 4], both crop centres in view 1's frame."""
    flip = params1[:, PARAMS.index("flip")]
    a, b = describe(params1, jitter, flip), describe(params2, jitter, flip)
    return {t: a[t] - b[t] for t in TARGETS}


def loss(predictors: nn.ModuleDict, z1: torch.Tensor, z2: torch.Tensor, params1: torch.Tensor,
         params2: torch.Tensor, *, weights: dict[str, float], jitter: dict) -> torch.Tensor:
    z = torch.cat([torch.cat([z1, z2], 1), torch.cat([z2, z1], 1)])
    forward, backward = targets(params1, params2, jitter), targets(params2, params1, jitter)
    total = z.new_zeros(())
    for name, predictor in predictors.items():
        target = torch.cat([forward[name], backward[name]]).to(z.dtype)
        total = total + weights[name] * F.mse_loss(torch.tanh(predictor(z)), target)
    return total
