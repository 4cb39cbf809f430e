"""The network fine-tuning trains: the backbone, a linear head, and what the auxiliary losses add (AugSelf's
predictors, ISDA's running statistics); and its predictions with the backbone's eval preprocessing."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bench.finetune import afan, augself, isda


class Net(nn.Module):
    def __init__(self, backbone: nn.Module, *, dim: int, num_classes: int, seed: int, afan_stage: int | None,
                 augself_weights: dict | None, augself_hidden: int, isda_cov: str | None):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)  # every training run starts from the same weights
        torch.manual_seed(seed)  # the new layers' initialisation is the seed's
        self.head = nn.Linear(dim, num_classes)
        self.predictors = augself.heads(dim, weights=augself_weights, hidden=augself_hidden) \
            if augself_weights else None
        self.estimator = isda.Estimator(num_classes, dim, isda_cov) if isda_cov else None
        # A-FAN perturbs the output of an intermediate stage: the backbone in two pieces that share its modules
        self.front, self.back = afan.split(self.backbone, afan_stage) if afan_stage else (None, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def trainable(net: Net) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]


@torch.inference_mode()
def predict(net: Net, images: Dataset, *, batch_size: int, num_workers: int, device: torch.device,
            amp: bool, desc: str) -> torch.Tensor:
    """Predicted classes [N] (on the CPU) of every image of `images` (already with its eval transform)."""
    cuda = device.type == "cuda"
    net.eval()
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=cuda)
    out = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for x, _ in tqdm(loader, desc=desc, unit="batch", disable=None, leave=False):
            x = x.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(net(x).argmax(1).cpu())
    return torch.cat(out)
