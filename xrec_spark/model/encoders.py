"""Content and history encoders: the parts of the towers that read item content and histories.

Shapes: ``B`` batch, ``L`` history length, ``T`` tokens per item, ``D`` embedding_dim.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrec_spark.config import ContentEncoderKind, FusionKind, HistoryEncoderKind

# Positions beyond this share the last recency bias of the attention encoder.
MAX_POSITIONS = 512


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer perceptron ``[*, d_in] -> [*, d_out]`` with a ReLU between."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class ContentEncoder(nn.Module):
    """Item content -> one vector: hashed text n-grams, sentence vectors, image vectors, fused.

    Inputs: tokens long ``[N, T]`` (0 = padding), text_vector ``[N, d_txt]`` or None, image
    ``[N, d_img]`` or None. Output ``[N, D]``. Modalities: hashed n-grams (mean EmbeddingBag)
    when ``kind`` is hashed, a projection of the sentence vector when ``kind`` is sentence, a
    projection of the image vector when ``d_img`` is given. Fusion ``concat``: MLP over the
    concatenated modality vectors; ``gated``: sum of modality vectors each scaled by a learned
    sigmoid gate of itself.

    Example::

        enc = ContentEncoder(ContentEncoderKind.HASHED, FusionKind.CONCAT, dim=8, hidden=16,
                             buckets=64, d_txt=None, d_img=None)
        enc(torch.tensor([[3, 5, 0]]), None, None).shape  # (1, 8)
    """

    def __init__(self, kind: ContentEncoderKind, fusion: FusionKind, dim: int, hidden: int,
                 buckets: int, d_txt: int | None, d_img: int | None, sparse: bool = False) -> None:
        super().__init__()
        self.kind, self.fusion = kind, fusion
        self.bag = (nn.EmbeddingBag(buckets, dim, mode="mean", sparse=sparse)
                    if kind is ContentEncoderKind.HASHED else None)
        if kind is ContentEncoderKind.SENTENCE and d_txt is None:
            raise ValueError("model.content_encoder=sentence needs ItemContent.text_vector")
        self.text_proj = nn.Linear(d_txt, dim) if kind is ContentEncoderKind.SENTENCE and d_txt else None
        self.image_proj = nn.Linear(d_img, dim) if d_img else None
        self.n_modalities = sum(m is not None for m in (self.bag, self.text_proj, self.image_proj))
        if self.n_modalities == 0:
            raise ValueError("ContentEncoder needs at least one modality (hashed text, sentence or image)")
        if fusion is FusionKind.CONCAT:
            self.fuse: nn.Module = mlp(dim * self.n_modalities, hidden, dim)
        else:
            self.fuse = nn.ModuleList([nn.Linear(dim, dim) for _ in range(self.n_modalities)])

    def forward(self, tokens: Tensor, text_vector: Tensor | None, image: Tensor | None) -> Tensor:
        parts: list[Tensor] = []
        if self.bag is not None:
            # Flat ids + offsets of the non-padding tokens: several times faster on CPU than a
            # 2-d input with padding_idx. An item without tokens is an empty bag (zeros).
            present = tokens > 0
            offsets = torch.cumsum(present.sum(1), 0) - present.sum(1)
            parts.append(self.bag(tokens[present], offsets))
        if self.text_proj is not None:
            if text_vector is None:
                raise ValueError("content encoder was built with text vectors, the item content has none")
            parts.append(self.text_proj(text_vector))
        if self.image_proj is not None:
            if image is None:
                raise ValueError("content encoder was built with image vectors, the item content has none")
            parts.append(self.image_proj(image))
        if self.fusion is FusionKind.CONCAT:
            return self.fuse(torch.cat(parts, dim=-1))
        gates = cast(nn.ModuleList, self.fuse)
        return torch.stack([torch.sigmoid(g(p)) * p for g, p in zip(gates, parts)]).sum(0)


class HistoryEncoder(nn.Module):
    """Pools the vectors of a user's recent items into one vector.

    Inputs: items ``[B, L, D]`` (item-tower vectors, most recent first), mask bool ``[B, L]``
    (False = padding). Output ``[B, D]``; an empty history gives zeros. Kinds: ``mean`` (masked
    sum over n^pool_power, n the row's items: the mean at 1), ``attention`` (learned query over the items plus a recency bias per position),
    ``gru`` (GRU over the items oldest to newest, last state projected), ``category_attention``
    (the query is the target category's: one learned vector per category, plus a learned bonus
    for history items of the target category itself; it needs ``target [B]`` and the history
    items' categories ``item_category [B, L]``, and starts as the mean: zero queries and bonus).

    Example::

        enc = HistoryEncoder(HistoryEncoderKind.MEAN, dim=4)
        enc(torch.ones(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool))
        # -> [[1, 1, 1, 1], [0, 0, 0, 0]]
    """

    def __init__(self, kind: HistoryEncoderKind, dim: int, n_categories: int = 0, pool_power: float = 1.0) -> None:
        super().__init__()
        if kind is HistoryEncoderKind.NONE:
            raise ValueError("HistoryEncoder kind 'none' has no encoder; do not build one")
        self.kind, self.pool_power = kind, pool_power
        if kind is HistoryEncoderKind.CATEGORY_ATTENTION:
            if n_categories < 1:
                raise ValueError("history_encoder=category_attention needs n_categories >= 1")
            self.key = nn.Linear(dim, dim)
            self.category_query = nn.Parameter(torch.zeros(n_categories + 1, dim))
            self.same_category = nn.Parameter(torch.zeros(()))
            self.position_bias = nn.Parameter(torch.zeros(MAX_POSITIONS))
        elif kind is HistoryEncoderKind.ATTENTION:
            self.key = nn.Linear(dim, dim)
            self.query = nn.Parameter(torch.zeros(dim))
            self.position_bias = nn.Parameter(torch.zeros(MAX_POSITIONS))
        elif kind is HistoryEncoderKind.GRU:
            self.gru = nn.GRU(dim, dim, batch_first=True)
            self.out = nn.Linear(dim, dim)

    @property
    def targeted(self) -> bool:
        """True when pooling depends on the target category (``target`` / ``item_category`` needed)."""
        return self.kind is HistoryEncoderKind.CATEGORY_ATTENTION

    def pool(self, table: Tensor, index: Tensor, mask: Tensor, target: Tensor | None = None,
             item_category: Tensor | None = None) -> Tensor:
        """Like ``forward`` for items given as rows of ``table`` ``[U, D]`` picked by ``index`` ``[B, L]``.

        Mean pooling runs as a weighted EmbeddingBag over the table, never materialising the
        ``[B, L, D]`` history (several times cheaper forward and backward).
        """
        if self.targeted:
            return self.forward(table[index], mask, target, item_category)
        if self.kind is not HistoryEncoderKind.MEAN:
            return self.forward(table[index], mask)
        counts = mask.sum(1)
        offsets = torch.cumsum(counts, 0) - counts
        weights = counts.clamp_min(1).to(table.dtype).pow(-self.pool_power).repeat_interleave(counts)
        return F.embedding_bag(index[mask], table, offsets, mode="sum", per_sample_weights=weights)

    def forward(self, items: Tensor, mask: Tensor, target: Tensor | None = None,
                item_category: Tensor | None = None) -> Tensor:
        maskf = mask.to(items.dtype)
        if self.targeted:
            if target is None or item_category is None:
                raise ValueError("history_encoder=category_attention needs target and item_category")
            return self._category_attention(items, mask, maskf, target, item_category)
        if self.kind is HistoryEncoderKind.MEAN:
            return (items * maskf.unsqueeze(-1)).sum(1) / maskf.sum(1, keepdim=True).clamp_min(1.0).pow(self.pool_power)
        if self.kind is HistoryEncoderKind.ATTENTION:
            return self._attention(items, mask, maskf)
        return self._gru(items, mask, maskf)

    def _attention(self, items: Tensor, mask: Tensor, maskf: Tensor) -> Tensor:
        positions = torch.arange(items.shape[1], device=items.device).clamp_max(MAX_POSITIONS - 1)
        logits = torch.tanh(self.key(items)) @ self.query + self.position_bias[positions]
        # Finite fill, then renormalise over real items: an all-padding row pools to zeros, not NaN.
        weights = torch.softmax(logits.masked_fill(~mask, -1e4), dim=1) * maskf
        weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        return (weights.unsqueeze(-1) * items).sum(1)

    def _category_attention(self, items: Tensor, mask: Tensor, maskf: Tensor, target: Tensor,
                            item_category: Tensor) -> Tensor:
        positions = torch.arange(items.shape[1], device=items.device).clamp_max(MAX_POSITIONS - 1)
        query = self.category_query[target.clamp(0, self.category_query.shape[0] - 1)]      # [B, D]
        logits = (torch.tanh(self.key(items)) * query.unsqueeze(1)).sum(-1)                # [B, L]
        logits = logits + self.same_category * (item_category == target.unsqueeze(1)).to(items.dtype)
        logits = logits + self.position_bias[positions]
        weights = torch.softmax(logits.masked_fill(~mask, -1e4), dim=1) * maskf
        weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
        return (weights.unsqueeze(-1) * items).sum(1)

    def _gru(self, items: Tensor, mask: Tensor, maskf: Tensor) -> Tensor:
        lengths = mask.sum(1)
        # Reverse each row's real prefix so the GRU reads oldest -> newest and ends on the newest.
        pos = torch.arange(items.shape[1], device=items.device).unsqueeze(0)
        rev = (lengths.unsqueeze(1) - 1 - pos).clamp_min(0)
        ordered = items.gather(1, rev.unsqueeze(-1).expand_as(items)) * maskf.unsqueeze(-1)
        packed = nn.utils.rnn.pack_padded_sequence(ordered, lengths.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, last = self.gru(packed)
        return self.out(last[0]) * (lengths > 0).to(items.dtype).unsqueeze(-1)
