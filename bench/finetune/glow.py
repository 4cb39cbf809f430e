"""A Glow (Kingma & Dhariwal 2018) on images, in the form the flow seed's official code uses (okyksl/flow-lp,
whose flpert/models/glow is chrischute/glow's PyTorch Glow): written here from those facts, not imported
from a library, because the perturbation radii of the official commands are defined on this model's latent
and normflows' Glow differs in each of the points below (its coupling is x * sigmoid(s) + t, it has no
ActNorm in the coupling network, and its multi-scale latent is a list with learned base distributions).

  pixels x in [0, 1] (quantised to 1/255) -> dequantise y = (255 x + u) / 256, u ~ U[0, 1) -> squeeze the
  bounds, y' = 0.05 + 0.9 y -> logit -> squeeze (2x2 -> channels) -> L levels of K steps (ActNorm,
  invertible 1x1 convolution, affine coupling); after each level but the last: squeeze and split the
  channels in two, one half goes on to the next level -> every half re-assembled into z, one tensor of the
  image's shape, with a standard normal prior (no learned prior at the splits).

Affine coupling (RealNVP's form, as the official code): the first half of the channels changes,
  x_a' = (x_a + t) * exp(s), s = scale * tanh(s_raw), (s_raw, t) = NN(x_b) interleaved along channels;
  NN: 3x3 conv -> ActNorm -> ReLU -> 1x1 conv -> ActNorm -> ReLU -> 3x3 conv (zero init) * exp(3 * logs).
ActNorm is initialised from its first training batch (zero mean, unit variance per channel). The 1x1
convolution is a full matrix (no LU form), initialised to a random rotation; its inverse in float64.

Decoding is the official one: sigmoid of the logit, without undoing the 0.9 bounds (so an unperturbed latent
decodes to 0.05 + 0.9 y: contrast pulled towards grey); `exact=True` undoes them (our option).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BOUND = 0.9  # the logit's input is kept inside [0.05, 0.95] (official `bounds`)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2]: each 2x2 patch of a channel becomes 4 channels."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


class ActNorm(nn.Module):
    """Per-channel affine map (x + bias) * exp(logs), initialised from the first training batch."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("initialised", torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialised:
            with torch.no_grad():
                mean = x.mean((0, 2, 3), keepdim=True)
                std = (x - mean).pow(2).mean((0, 2, 3), keepdim=True).sqrt()
                self.bias.copy_(-mean)
                self.logs.copy_(-(std + 1e-6).log())
                self.initialised.fill_(1)
        return (x + self.bias) * self.logs.exp(), self.logs.sum() * x.shape[2] * x.shape[3]

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y * (-self.logs).exp() - self.bias, -self.logs.sum() * y.shape[2] * y.shape[3]


class InvConv(nn.Module):
    """Invertible 1x1 convolution: a channels x channels matrix W, log|det| = H W log|det W|."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0].float())

    def forward(self, x):
        ldj = torch.linalg.slogdet(self.weight)[1] * x.shape[2] * x.shape[3]
        return F.conv2d(x, self.weight[:, :, None, None]), ldj

    def inverse(self, y):
        ldj = torch.linalg.slogdet(self.weight)[1] * y.shape[2] * y.shape[3]
        w = torch.linalg.inv(self.weight.double()).to(y.dtype)
        return F.conv2d(y, w[:, :, None, None]), -ldj


class Coupling(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        half = channels // 2
        self.in_conv = nn.Conv2d(half, hidden, 3, padding=1, bias=False)
        self.mid_conv = nn.Conv2d(hidden, hidden, 1, bias=False)
        for conv in (self.in_conv, self.mid_conv):
            nn.init.normal_(conv.weight, 0.0, 0.05)
        self.in_norm, self.mid_norm = ActNorm(hidden), ActNorm(hidden)
        self.out_conv = nn.Conv2d(hidden, 2 * half, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.out_logs = nn.Parameter(torch.zeros(2 * half, 1, 1))
        self.scale = nn.Parameter(torch.ones(half, 1, 1))

    def shift_scale(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.in_norm(self.in_conv(kept))[0])
        h = F.relu(self.mid_norm(self.mid_conv(h))[0])
        st = self.out_conv(h) * (3.0 * self.out_logs).exp()
        return self.scale * torch.tanh(st[:, 0::2]), st[:, 1::2]

    def forward(self, x):
        change, kept = x.chunk(2, dim=1)
        s, t = self.shift_scale(kept)
        return torch.cat(((change + t) * s.exp(), kept), dim=1), s.flatten(1).sum(1)

    def inverse(self, y):
        change, kept = y.chunk(2, dim=1)
        s, t = self.shift_scale(kept)
        return torch.cat((change * (-s).exp() - t, kept), dim=1), -s.flatten(1).sum(1)


class Step(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.parts = nn.ModuleList([ActNorm(channels), InvConv(channels), Coupling(channels, hidden)])

    def forward(self, x):
        total = 0.0
        for part in self.parts:
            x, ldj = part(x)
            total = total + ldj
        return x, total

    def inverse(self, y):
        total = 0.0
        for part in reversed(self.parts):
            y, ldj = part.inverse(y)
            total = total + ldj
        return y, total


class Glow(nn.Module):
    """`levels` levels of `steps` steps with `hidden` channels in each coupling network; images of
    `channels` channels whose side is a multiple of 2 ** levels. The initial weights are the seed's."""

    def __init__(self, *, levels: int, steps: int, hidden: int, seed: int, channels: int = 3):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.levels = nn.ModuleList([nn.ModuleList([Step(4 * channels * 2 ** i, hidden) for _ in range(steps)])
                                         for i in range(levels)])

    def flow(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits y [B, C, H, W] -> latent z of the same shape, and log|det dz/dy| [B]."""
        x, ldj, apart = squeeze(y), torch.zeros(len(y), device=y.device, dtype=y.dtype), []
        for i, level in enumerate(self.levels):
            for step in level:
                x, part = step(x)
                ldj = ldj + part
            if i < len(self.levels) - 1:
                x, out = squeeze(x).chunk(2, dim=1)
                apart.append(out)
        for out in reversed(apart):
            x = unsqueeze(torch.cat((x, out), dim=1))
        return unsqueeze(x), ldj

    def inverse_flow(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent z -> logits y, and log|det dy/dz| [B]."""
        x, ldj, apart = squeeze(z), torch.zeros(len(z), device=z.device, dtype=z.dtype), []
        for _ in range(len(self.levels) - 1):
            x, out = squeeze(x).chunk(2, dim=1)
            apart.append(out)
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                x = unsqueeze(torch.cat((x, apart[i]), dim=1))
            for step in reversed(self.levels[i]):
                x, part = step.inverse(x)
                ldj = ldj + part
        return unsqueeze(x), ldj

    def encode(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Pixels x in [0, 1], dequantisation noise U[0, 1) of x's shape -> latent z."""
        return self.flow(to_logits(x, noise)[0])[0]

    def decode(self, z: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Latent z -> pixels: the official sigmoid, or with the bounds undone (`exact`)."""
        y = torch.sigmoid(self.inverse_flow(z)[0])
        return (y - (1 - BOUND) / 2) / BOUND if exact else y

    def nll(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood [B] in nats of the quantised images x (256 levels per value): the
        official loss (RealNVP's equation 3): -log N(z; 0, I) - log|det| + D log 256."""
        y, ldj_logit = to_logits(x, noise)
        z, ldj = self.flow(y)
        dims = z[0].numel()
        prior = -0.5 * (z.pow(2).flatten(1).sum(1) + dims * math.log(2 * math.pi))
        return -(prior + ldj + ldj_logit) + dims * math.log(256)


def to_logits(x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantised, bounded logits of pixels x in [0, 1], and log|det| [B] of the map from (255 x + u) / 256."""
    y = (x * 255 + noise) / 256
    y = ((2 * y - 1) * BOUND + 1) / 2
    logit = y.log() - (1 - y).log()
    ldj = (F.softplus(logit) + F.softplus(-logit) + math.log(BOUND)).flatten(1).sum(1)
    return logit, ldj


def bits_per_dim(nll: torch.Tensor, dims: int) -> torch.Tensor:
    return nll / (dims * math.log(2))
