"""Feature-space methods. Each module has `fit(X, y, *, num_classes, points, device) -> Heads`:
`points` is a list of complete hyperparameter dicts (one per head, with its `seed`), all fitted at once.
A method may also take `init`: Heads (one per point) to start from; the protocol passes it to the
refit on train+val (the heads validated at the chosen point) only to methods whose `fit` has it. And
`rate`: a head's weight [C, D] and bias [C] -> its val score, for a method that may end its sweep early
(`linear`'s option `early_end`); the heads it leaves unfitted say so in their `fits` (`NOT_FITTED`).

Methods see only tensors: a method module is the math of that method. This package may import
bench.progress (a long fit says how far it is), bench.flows (the flow `method=flow` perturbs through) and
itself, never the data, backbones, features, protocol, records, config, sweep, report or CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NOT_FITTED = "early end"  # a head's `fits` stop when its point was not fitted: the protocol leaves it out of the choice


@dataclass
class Heads:
    """G linear classifiers: class_g(x) = argmax_c (W_g x + b_g)_c.

    Methods that train on L2-normalised (or centred and normalised) features need no normalisation
    here: dividing x by its norm scales all of a row's logits by the same positive number, which
    leaves the argmax unchanged, and centring is folded into the bias (b_g = -W_g m).
    """

    weight: torch.Tensor  # [G, C, D]
    bias: torch.Tensor | None  # [G, C]
    fits: list[dict] | None = None  # per head, how its fit ended (iterations, ...), for methods that say

    def predict(self, X: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Predicted classes [G, N], computed in chunks of rows so that [G, N, C] never exists at once."""
        out = []
        W = self.weight
        for start in range(0, len(X), chunk):
            x = X[start:start + chunk].to(W.device, W.dtype)
            logits = torch.einsum("nd,gcd->gnc", x, W)
            if self.bias is not None:
                logits = logits + self.bias[:, None, :]
            out.append(logits.argmax(-1).cpu())
        return torch.cat(out, dim=1)
