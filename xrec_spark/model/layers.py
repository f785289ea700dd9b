"""Small building blocks the towers share: id-dropout, id lookup, distinct ids, initialisation.

Shapes: ``N`` ids; ``D`` embedding_dim. Dense ids start at 1; 0 is padding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from xrec_spark.model.heads import Experts


class IdDropout(nn.Module):
    """Keep-mask for id embeddings: ``n -> [n, 1]`` of 0/1, all ones in eval mode.

    Draws from its own ``torch.Generator`` (never the global RNG), so masks depend only on the
    model seed and the number of draws.
    """

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, n: int, device: torch.device) -> Tensor:
        if not self.training or self.p == 0.0:
            return torch.ones(n, 1, device=device)
        keep = torch.rand(n, 1, generator=self.generator) >= self.p
        return keep.to(device=device, dtype=torch.float32)


def unique_items(idx: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """(sorted distinct ids, inverse) of ``idx`` ``[N]`` with ids in ``0..n_rows-1``.

    Like ``torch.unique(return_inverse=True)``; when the id range is small next to N it marks
    ids in a boolean table instead of sorting (a sort of N ids costs more on CPU).
    """
    if n_rows > 8 * idx.numel():
        return torch.unique(idx, return_inverse=True)
    seen = torch.zeros(n_rows, dtype=torch.bool, device=idx.device)
    seen[idx] = True
    position = torch.cumsum(seen, 0) - 1
    return torch.nonzero(seen).squeeze(1), position[idx]


def lookup(table: nn.Embedding, idx: Tensor) -> Tensor:
    """Rows of ``table`` for ``idx`` ``[N]``; ids outside ``1..rows-1`` give zero vectors."""
    valid = (idx >= 1) & (idx < table.num_embeddings)
    return table(torch.where(valid, idx, torch.zeros_like(idx))) * valid.unsqueeze(-1).to(table.weight.dtype)


def init_module(module: nn.Module, generator: torch.Generator) -> None:
    """Initialise one module's own parameters from ``generator``.

    Embeddings N(0, 0.1) (padding row kept zero); linear maps Xavier-uniform with zero bias,
    except a category head's map θ_k, which starts at identity plus N(0, 0.01) noise; expert
    weights uniform in ±1/sqrt(fan-in) with zero biases; GRU weights uniform in ±1/sqrt(D).
    """
    with torch.no_grad():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            module.weight.normal_(0.0, 0.1, generator=generator)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear) and getattr(module, "near_identity", False):
            eye = torch.eye(module.weight.shape[0])
            module.weight.copy_(eye + 0.01 * torch.randn(eye.shape, generator=generator))
            module.bias.zero_()
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, generator=generator)
            module.bias.zero_()
        elif isinstance(module, Experts):
            for param in (module.w1, module.w2):
                bound = 1.0 / math.sqrt(param.shape[1])
                param.uniform_(-bound, bound, generator=generator)
            module.b1.zero_()
            module.b2.zero_()
        elif isinstance(module, nn.GRU):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for param in module.parameters():
                param.uniform_(-bound, bound, generator=generator)
