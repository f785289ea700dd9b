"""f_k: the shared bottom (MLP, MMoE or PLE experts) and the small per-category heads θ_k.

Shapes: ``B`` batch, ``D`` embedding_dim, ``H`` hidden_dim, ``E`` experts, ``K`` categories.
Categories are numbered 1..K (0 is padding and never has a head).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from xrec_spark.config import BottomKind
from xrec_spark.model.encoders import mlp

Groups = tuple[Tensor, Tensor, list[tuple[int, int, int]]]


def group_by_category(category_idx: Tensor) -> Groups:
    """Rows grouped by category: (order, inverse, [(k, start, end), ...]) over the sorted rows.

    ``category_idx[order]`` is sorted; rows ``start:end`` of it have category k; indexing a
    tensor built in sorted order with ``inverse`` restores the batch order.
    """
    order = torch.argsort(category_idx, stable=True)
    cats, counts = torch.unique_consecutive(category_idx[order], return_counts=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    segments, start = [], 0
    for k, n in zip(cats.tolist(), counts.tolist()):
        segments.append((int(k), start, start + int(n)))
        start += int(n)
    return order, inverse, segments


def per_category(groups: Groups, fn: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """Apply ``fn(k, *rows_of_k)`` to each category's rows and reassemble in batch order."""
    order, inverse, segments = groups
    ordered = [t[order] for t in tensors]
    outs = [fn(k, *[t[s:e] for t in ordered]) for k, s, e in segments]
    return torch.cat(outs)[inverse]


class Experts(nn.Module):
    """``E`` two-layer expert MLPs evaluated together: ``[B, D] -> [B, E, D]``.

    Example::

        Experts(n_experts=4, dim=8, hidden=16)(torch.zeros(2, 8)).shape  # (2, 4, 8)
    """

    def __init__(self, n_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(n_experts, dim))

    def forward(self, h: Tensor) -> Tensor:
        mid = torch.relu(torch.einsum("bd,edh->beh", h, self.w1) + self.b1)
        return torch.einsum("beh,ehd->bed", mid, self.w2) + self.b2


def make_bottom(kind: BottomKind, dim: int, hidden: int, n_experts: int) -> nn.Module:
    """The bottom network: an MLP ``[B, D] -> [B, D]`` or (MMoE, PLE's shared) experts ``[B, D] -> [B, E, D]``."""
    return mlp(dim, hidden, dim) if kind is BottomKind.SHARED else Experts(n_experts, dim, hidden)


class CategoryHead(nn.Module):
    """θ_k, the parameters that belong to one category: ``[n, D] -> [n, D]``.

    Holds a linear map initialised near identity, the category's MMoE gate (``[n, D] -> [n, E]``)
    when the bottom is MMoE, its ``n_specific`` own experts and a gate over the shared and own
    ones (``[n, D] -> [n, E + S]``) when it is PLE, and the category's own bottom when nothing
    is shared across categories (``own_bottom``).

    Example::

        head = CategoryHead(dim=8, hidden=16, kind=BottomKind.SHARED, n_experts=1, own_bottom=False)
        head.linear(torch.zeros(3, 8)).shape  # (3, 8)
    """

    def __init__(self, dim: int, hidden: int, kind: BottomKind, n_experts: int, own_bottom: bool,
                 n_specific: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.linear.near_identity = True  # read by the model's initialiser
        ple = kind is BottomKind.PLE
        self.gate = nn.Linear(dim, n_experts + (n_specific if ple else 0)) if kind is not BottomKind.SHARED else None
        self.experts = Experts(n_specific, dim, hidden) if ple else None
        self.bottom = make_bottom(kind, dim, hidden, n_experts) if own_bottom else None


class CategoryHeads(nn.Module):
    """f_k(h) = θ_k(z), z = h + bottom(h) (MLP) or h + Σ_e gate_k(h)_e · expert_e(h) (MMoE).

    PLE (one extraction level, i.e. CGC, Tang et al. RecSys 2020): the sum runs over the shared
    experts and category k's own ``n_specific`` experts, so a category can keep what does not
    transfer out of the experts it shares.

    Input h ``[B, D]`` and category_idx long ``[B]`` in 1..K; output ``[B, D]``. With
    ``shared=True`` the bottom / experts are one module for all categories; with ``False`` each
    category's :class:`CategoryHead` owns its bottom (the no-sharing baseline).

    Example::

        heads = CategoryHeads(n_categories=3, dim=8, hidden=16, kind=BottomKind.MMOE, n_experts=2)
        heads(torch.zeros(4, 8), torch.tensor([1, 3, 3, 2])).shape  # (4, 8)
    """

    def __init__(self, n_categories: int, dim: int, hidden: int, kind: BottomKind, n_experts: int,
                 shared: bool = True, n_specific: int = 1) -> None:
        super().__init__()
        self.dim, self.hidden, self.kind, self.n_experts, self.shared = dim, hidden, kind, n_experts, shared
        self.n_specific = n_specific
        self.bottom = make_bottom(kind, dim, hidden, n_experts) if shared else None
        self.heads = nn.ModuleDict({str(k): self.new_head() for k in range(1, n_categories + 1)})

    def new_head(self) -> CategoryHead:
        """A fresh head with this module's settings (for a new category)."""
        return CategoryHead(self.dim, self.hidden, self.kind, self.n_experts, own_bottom=not self.shared,
                            n_specific=self.n_specific)

    def head(self, k: int) -> CategoryHead:
        return self.heads[str(k)]  # type: ignore[return-value]

    def forward(self, h: Tensor, category_idx: Tensor, groups: Groups | None = None) -> Tensor:
        groups = group_by_category(category_idx) if groups is None else groups
        shared = self.bottom(h) if self.bottom is not None else None
        if shared is None:
            return per_category(groups, self.forward_one, h)
        return per_category(groups, self.forward_one, h, shared)

    def forward_one(self, k: int, h: Tensor, shared: Tensor | None = None) -> Tensor:
        """f_k on rows of one category: h ``[n, D]`` (and the shared bottom's output) -> ``[n, D]``."""
        head = self.head(k)
        bottom_out = shared if shared is not None else head.bottom(h)  # type: ignore[misc]
        if head.experts is not None:
            bottom_out = torch.cat([bottom_out, head.experts(h)], dim=1)
        if head.gate is not None:
            weights = torch.softmax(head.gate(h), dim=-1)
            bottom_out = (weights.unsqueeze(-1) * bottom_out).sum(1)
        return head.linear(h + bottom_out)
