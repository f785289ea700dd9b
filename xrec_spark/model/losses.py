"""Per-category losses L_k and their weighted total Σ_k w_k L_k.

Kept apart from the model so the same model serves training and inference. Shapes: ``B`` batch,
``D`` embedding_dim, ``K`` categories (numbered 1..K).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrec_spark.config import LossKind, ModelConfig, TaskWeighting


class MultiTaskLoss(nn.Module):
    """total = Σ_k w_k L_k over the categories present in the batch.

    ``forward(u [B, D], v [B, D], batch, log_popularity)`` -> (total, {k: L_k}). ``batch`` needs
    category_idx long ``[B]``, label float ``[B]`` (1/0) and weight float ``[B]`` (optional, 1),
    plus item_idx ``[B]`` for sampled softmax.

    - ``bce``: L_k = weighted mean of binary cross-entropy of <u, v> against label over the
      category's labelled rows (positives and the sampled negatives).
    - ``sampled_softmax``: positives only; each positive's logits are <u_i, v_j> / temperature
      − log Q_j over the batch's positives j of the same category (in-batch negatives; rows
      with the same item as i, other than i, are masked), where log Q_j =
      ``log_popularity[item_idx_j]`` (the per-item table ``[n_items + 1]`` of
      ``log(1 + train_count)``), the log-popularity correction of sampling bias. None: no
      correction. L_k = weighted mean cross-entropy of the true item.

    - ``softmax``: positives only; each positive is ranked against its category's items, as
      evaluation ranks them: logits <u, v_j> / temperature over **every** item j of the category
      when it has at most ``softmax_full_max_items``, else over a pool of ``softmax_pool`` items
      drawn uniformly from the category each step (shared by the batch) plus the batch's
      positives of the category, minus log Q_j, the log of j's chance to be in that set (Yi et
      al., RecSys 2019). Needs ``catalogue`` (the items of each category) and ``item_vectors``
      (the model's ``item_vectors``), passed to ``forward``.

    Weights (normalised over the categories in the batch): ``uniform`` w_k = 1/|present|;
    ``size`` w_k ∝ category_sizes[k]; ``uncertainty`` (Kendall, Gal & Cipolla 2018) total =
    mean_k(exp(−s_k) L_k + s_k) with one learned log-variance s_k per category.

    Example::

        loss = MultiTaskLoss(ModelConfig(), n_categories=2)
        total, per_category = loss(u, v, {"category_idx": c, "label": y, "weight": w})
    """

    def __init__(self, cfg: ModelConfig, n_categories: int, category_sizes: Sequence[int] | None = None) -> None:
        super().__init__()
        if n_categories < 1:
            raise ValueError(f"MultiTaskLoss: n_categories must be >= 1, got {n_categories}")
        self.kind, self.weighting, self.temperature = cfg.loss, cfg.task_weighting, cfg.temperature
        self.full_max, self.pool = cfg.softmax_full_max_items, cfg.softmax_pool
        self.n_categories = n_categories
        sizes = torch.ones(n_categories + 1)
        if cfg.task_weighting is TaskWeighting.SIZE:
            sizes = _size_table(category_sizes, n_categories)
        self.register_buffer("sizes", sizes, persistent=False)
        # One scalar per category (not one vector) so transfer phases can freeze them per category.
        self.log_vars = nn.ParameterDict(
            {str(k): nn.Parameter(torch.zeros(())) for k in range(1, n_categories + 1)}
            if cfg.task_weighting is TaskWeighting.UNCERTAINTY else {})

    def category_parameters(self, k: int) -> list[nn.Parameter]:
        """The loss's own parameters for category k (the log-variance under uncertainty weighting)."""
        return [self.log_vars[str(k)]] if str(k) in self.log_vars else []

    def forward(self, u: Tensor, v: Tensor, batch: Mapping[str, Tensor],
                log_popularity: Tensor | None = None, catalogue: "Catalogue | None" = None,
                item_vectors: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, dict[int, float]]:
        category = batch["category_idx"]
        label = batch["label"].to(u.dtype)
        weight = batch["weight"].to(u.dtype) if "weight" in batch else torch.ones_like(label)
        if self.kind is LossKind.BCE:
            losses, rows = F.binary_cross_entropy_with_logits((u * v).sum(-1), label, reduction="none"), None
        elif self.kind is LossKind.SOFTMAX:
            if catalogue is None or item_vectors is None:
                raise ValueError("model.loss=softmax needs the catalogue and item_vectors (see MultiTaskLoss)")
            losses, rows = self._category_softmax(u, batch, category, label, catalogue, item_vectors)
            category, weight = category[rows], weight[rows]
        else:
            losses, rows = self._sampled_softmax(u, v, batch, category, label, log_popularity)
            category, weight = category[rows], weight[rows]
        if category.numel() == 0:  # no rows to learn from; keep the graph so every rank backpropagates
            return (u.sum() + v.sum()) * 0.0, {}
        if int(category.max()) > self.n_categories or int(category.min()) < 1:
            raise ValueError(f"batch['category_idx'] has values outside 1..{self.n_categories}")
        k_slots = self.n_categories + 1
        sums = torch.zeros(k_slots, dtype=u.dtype, device=u.device).index_add(0, category, weight * losses)
        norms = torch.zeros(k_slots, dtype=u.dtype, device=u.device).index_add(0, category, weight)
        present = sorted(set(category.tolist()))
        per_k = {k: sums[k] / norms[k].clamp_min(1e-12) for k in present}
        return self._combine(per_k), {k: float(l.detach()) for k, l in per_k.items()}

    def _combine(self, per_k: dict[int, Tensor]) -> Tensor:
        if self.weighting is TaskWeighting.UNCERTAINTY:
            terms = [torch.exp(-self.log_vars[str(k)]) * l + self.log_vars[str(k)] for k, l in per_k.items()]
            return torch.stack(terms).mean()
        w = torch.stack([self.sizes[k] for k in per_k]).to(next(iter(per_k.values())).dtype)
        w = w / w.sum()
        return (w * torch.stack(list(per_k.values()))).sum()

    def _sampled_softmax(self, u: Tensor, v: Tensor, batch: Mapping[str, Tensor], category: Tensor,
                         label: Tensor, log_popularity: Tensor | None) -> tuple[Tensor, Tensor]:
        rows = torch.nonzero(label > 0.5).squeeze(1)
        item = batch["item_idx"][rows]
        cat = category[rows]
        logits = (u[rows] @ v[rows].T) / self.temperature
        if log_popularity is not None:
            table = log_popularity.to(logits.device, logits.dtype)
            # Items beyond the table (added after it was built) have no count: log(1 + 0) = 0.
            inside = item < table.shape[0]
            log_q = torch.where(inside, table[item.clamp_max(table.shape[0] - 1)], torch.zeros_like(logits[0]))
            logits = logits - log_q.unsqueeze(0)
        eye = torch.eye(rows.numel(), dtype=torch.bool, device=u.device)
        invalid = (cat.unsqueeze(1) != cat.unsqueeze(0)) | ((item.unsqueeze(1) == item.unsqueeze(0)) & ~eye)
        logits = logits.masked_fill(invalid, float("-inf"))
        target = torch.arange(rows.numel(), device=u.device)
        return F.cross_entropy(logits, target, reduction="none"), rows


    def _category_softmax(self, u: Tensor, batch: Mapping[str, Tensor], category: Tensor, label: Tensor,
                          catalogue: "Catalogue", item_vectors: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        rows = torch.nonzero(label > 0.5).squeeze(1)
        item, cat = batch["item_idx"][rows], category[rows]
        sets: list[tuple[Tensor, Tensor, Tensor | None]] = []   # (rows of k, candidates, log Q)
        for k in torch.unique(cat).tolist():
            mine = torch.nonzero(cat == k).squeeze(1)
            items = catalogue.items(int(k)).to(item.device)
            positives = item[mine]
            if items.numel() <= self.full_max:
                sets.append((mine, torch.unique(torch.cat([items, positives])), None))
                continue
            drawn = items[uniform_subset(items.numel(), self.pool, catalogue.generator).to(item.device)]
            candidates = torch.unique(torch.cat([drawn, positives]))
            # Chance to be in the set: the uniform pool's share (exact: the pool has no repeats)
            # plus the batch's positives, drawn in proportion to train popularity in the category.
            pop = catalogue.popularity(candidates, int(k)).to(u.dtype)
            q = self.pool / items.numel() + positives.numel() * pop
            sets.append((mine, candidates, torch.log(q.clamp(1e-12, 1.0))))
        # Each item belongs to one category, so the sets are disjoint: one item-tower pass over
        # them laid end to end, split per category. (Indexing one shared [N, D] tensor per
        # category instead costs a zero-filled [N, D] gradient per category in the backward.)
        vectors = item_vectors(torch.cat([c for _, c, _ in sets])).to(u.dtype)
        blocks = vectors.split([c.numel() for _, c, _ in sets])
        out = torch.empty(rows.numel(), dtype=u.dtype, device=u.device)
        for (mine, candidates, log_q), block in zip(sets, blocks):
            logits = (u[rows[mine]] @ block.T) / self.temperature
            if log_q is not None:
                logits = logits - log_q.unsqueeze(0)
            target = torch.searchsorted(candidates, item[mine])
            out[mine] = F.cross_entropy(logits, target, reduction="none")
        return out, rows


def uniform_subset(n: int, size: int, generator: torch.Generator) -> Tensor:
    """``size`` distinct positions of ``0..n-1`` ``[size]``, every subset equally likely (all
    ``n`` when ``size >= n``).

    Draws with replacement and keeps each position's first draw, in draw order: rejection of
    repeats, which samples without replacement exactly. The work is O(size), not O(n), so a
    sampled softmax pool costs the same in a catalogue of 100k items as in one of 1M, and each
    step ranks against exactly ``size`` distinct items (draws with repeats gave fewer, the
    fewer the smaller the category).
    """
    if size >= n:
        return torch.arange(n)
    if 2 * size > n:  # dense case: repeats would be many, a permutation is as cheap
        return torch.randperm(n, generator=generator)[:size]
    kept = torch.zeros(0, dtype=torch.long)
    while kept.numel() < size:
        draws = torch.cat([kept, torch.randint(n, (2 * size,), generator=generator)])
        uniq, inverse = torch.unique(draws, return_inverse=True)
        first = torch.full((uniq.numel(),), draws.numel(), dtype=torch.long)
        first = first.scatter_reduce(0, inverse, torch.arange(draws.numel()), reduce="amin")
        kept = uniq[torch.argsort(first)]
    return kept[:size]


class Catalogue:
    """The items of each category, for ``loss=softmax``: ``items(k)`` sorted ids ``[N_k]``,
    ``popularity(ids, k)`` each id's share of the category's train positives, and the generator
    that draws sampled pools (seeded: same seed, same pools).

    Example::

        cat = Catalogue(item_category=torch.tensor([0, 1, 1, 2]), train_count=torch.tensor([0, 3, 1, 2]), seed=0)
        cat.items(1)  # tensor([1, 2])
    """

    def __init__(self, item_category: Tensor, train_count: Tensor, seed: int) -> None:
        ids = torch.arange(item_category.shape[0])
        real = ids >= 1
        self._items = {int(k): ids[real & (item_category == k)] for k in torch.unique(item_category[real]).tolist()}
        counts = train_count.to(torch.float64)
        totals = {k: float(counts[v].sum()) for k, v in self._items.items()}
        self._share = torch.zeros_like(counts, dtype=torch.float32)
        for k, v in self._items.items():
            if totals[k] > 0:
                self._share[v] = (counts[v] / totals[k]).to(torch.float32)
        self.generator = torch.Generator().manual_seed(seed)

    def items(self, k: int) -> Tensor:
        return self._items.get(k, torch.zeros(0, dtype=torch.long))

    def popularity(self, ids: Tensor, k: int) -> Tensor:
        return self._share.to(ids.device)[ids]


def _size_table(category_sizes: Sequence[int] | None, n_categories: int) -> Tensor:
    """``[K + 1]`` sizes indexed by category_idx from a list for 1..K (or 0..K, index 0 ignored)."""
    if category_sizes is None:
        raise ValueError("model.task_weighting=size needs category_sizes (examples per category)")
    values = [float(x) for x in category_sizes]
    if len(values) == n_categories:
        values = [0.0, *values]
    if len(values) != n_categories + 1:
        raise ValueError(f"category_sizes has {len(category_sizes)} entries; expected {n_categories} "
                         f"(categories 1..{n_categories}) or {n_categories + 1} (indexed by category_idx)")
    if any(x < 0 for x in values[1:]):
        raise ValueError(f"category_sizes must be >= 0, got {values[1:]}")
    return torch.tensor(values).clamp_min(1e-6)
