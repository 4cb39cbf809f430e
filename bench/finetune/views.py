"""Training images for fine-tuning: random views whose sampled parameters are kept, drawn from a
generator seeded per example and step, so a resumed run sees the very same views as an uninterrupted one.

The recipe (ssl-transfer, Ericsson et al. 2021): RandomResizedCrop to the backbone's input size
(bicubic, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip; val and test use the backbone's eval
preprocessing. AugSelf (Lee et al., NeurIPS 2021) has no fine-tuning script (its transfer evaluations,
linear and few-shot, freeze the backbone); its auxiliary loss is trained with its pretraining views
(hankook/AugSelf datasets.py), which `finetune_augself` and `finetune_twoview` use: two views per image,
RandomResizedCrop scale (0.2, 1), flip, colour jitter (brightness, contrast, saturation 0.4, hue 0.1,
applied with probability 0.8, its four operations in random order), grayscale with probability 0.2 and
Gaussian blur with probability 0.5 (sigma uniform in (0.1, 2), a kernel of 2 * floor(side / 20) + 1 pixels:
the official 23 at 224 px and 9 at 96 px). Sampling follows torchvision's algorithms, with an explicit
generator instead of the global one.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import functional as F

from bench.backbones import INTERPOLATIONS

# one row of kept parameters per view: crop (top, left, height, width as fractions of the image), flip
# (1 = flipped), the jitter's brightness, contrast, saturation factors and hue shift (1, 1, 1, 0 = none)
PARAMS = ("top", "left", "height", "width", "flip", "brightness", "contrast", "saturation", "hue")


def uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def sample_crop(gen: torch.Generator, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, h, w) in pixels: torchvision RandomResizedCrop.get_params' rule (10 tries, then the
    largest centred crop of the allowed aspect ratio)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * uniform(gen, *scale)
        aspect = math.exp(uniform(gen, *log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_jitter(gen: torch.Generator, *, brightness: float, contrast: float, saturation: float, hue: float,
                  p: float):
    """(factors b, c, s, hue shift, order of the four operations); the identity when not applied
    (probability 1 - p)."""
    if uniform(gen, 0, 1) >= p:
        return (1.0, 1.0, 1.0, 0.0), []
    order = torch.randperm(4, generator=gen).tolist()
    factors = (uniform(gen, 1 - brightness, 1 + brightness), uniform(gen, 1 - contrast, 1 + contrast),
               uniform(gen, 1 - saturation, 1 + saturation), uniform(gen, -hue, hue))
    return factors, order


BLUR_SIGMA = (0.1, 2.0)  # AugSelf's GaussianBlur


def blur_kernel(size: int) -> int:
    """The blur's odd kernel side for views of `size` pixels: AugSelf's 23 at 224 and 9 at 96."""
    return 2 * (size // 20) + 1


def view(image, gen: torch.Generator, *, size: int, interpolation: str, mean, std, scale, jitter: dict | None,
         grayscale: float = 0.0, blur: float = 0.0):
    """One augmented view (normalised tensor [3, size, size]) and its parameters [len(PARAMS)]. `grayscale`
    and `blur`: their probabilities (no draw is made for one that is 0)."""
    width, height = image.size
    top, left, h, w = sample_crop(gen, height, width, scale=tuple(scale))
    out = F.resized_crop(image, top, left, h, w, [size, size], interpolation=INTERPOLATIONS[interpolation],
                         antialias=True)
    flip = uniform(gen, 0, 1) < 0.5
    if flip:
        out = F.hflip(out)
    out = F.to_tensor(out)
    factors, order = sample_jitter(gen, **jitter) if jitter else ((1.0, 1.0, 1.0, 0.0), [])
    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for k in order:
        out = ops[k](out, factors[k])
    if grayscale > 0 and uniform(gen, 0, 1) < grayscale:
        out = F.rgb_to_grayscale(out, num_output_channels=3)
    if blur > 0 and uniform(gen, 0, 1) < blur:
        sigma = uniform(gen, *BLUR_SIGMA)
        out = F.gaussian_blur(out, [blur_kernel(size)] * 2, [sigma, sigma])
    if mean is not None:
        out = F.normalize(out, list(mean), list(std))
    params = torch.tensor([top / height, left / width, h / height, w / width, float(flip), *factors])
    return out, params


class Views(Dataset):
    """`images[i]` as `views` random views; indexed by (i, seed): the seed alone fixes the views."""

    def __init__(self, images: Dataset, *, views: int, **recipe):
        self.images, self.views, self.recipe = images, views, recipe

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index, seed = key
        image, label = self.images[index]
        gen = torch.Generator().manual_seed(seed)
        pairs = [view(image, gen, **self.recipe) for _ in range(self.views)]
        return torch.stack([x for x, _ in pairs]), torch.stack([p for _, p in pairs]), label


class Steps(Sampler):
    """Micro-batches of (index, seed) for steps `start` .. `steps - 1`: example number p of the run
    (p = step * batch + k) is entry p % n of epoch p // n's permutation, its seed a function of p, so
    the data of a step does not depend on where a run was resumed."""

    def __init__(self, n: int, *, batch_size: int, micro_batch: int, steps: int, start: int, seed: int):
        self.n, self.batch, self.micro = n, batch_size, micro_batch
        self.steps, self.start, self.seed = steps, start, seed

    def permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.steps):
            for first in range(0, self.batch, self.micro):
                keys = []
                first_p = step * self.batch + first
                for p in range(first_p, first_p + min(self.micro, self.batch - first)):
                    if p // self.n != epoch:
                        epoch, perm = p // self.n, self.permutation(p // self.n)
                    keys.append((perm[p % self.n], (self.seed * 1_000_003 + p) % 2**63))
                yield keys

    def __len__(self) -> int:
        return (self.steps - self.start) * math.ceil(self.batch / self.micro)
