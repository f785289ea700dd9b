"""The popularity prior and the category softmax: an untrained model ranks like per-category
popularity, the softmax loss is the cross-entropy over the category's items, a sampled pool
for large categories subtracts log Q, and training moves the score away from the prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xrec_spark.config import LossKind, ModelConfig
from xrec_spark.ranking.dense import top_k
from xrec_spark.model.content import ItemContent
from xrec_spark.model.losses import Catalogue, MultiTaskLoss, uniform_subset
from xrec_spark.model.towers import CrossCategoryModel, ModelSizes

# Items 1..8: category 1 = items 1-5, category 2 = items 6-8. Item 4 has no train positive.
CATEGORY = torch.tensor([0, 1, 1, 1, 1, 1, 2, 2, 2])
COUNTS = torch.tensor([0, 3, 7, 3, 0, 1, 2, 5, 1])
SIZES = ModelSizes(n_users=4, n_items=8, n_categories=2)


def content() -> ItemContent:
    return ItemContent(tokens=torch.zeros(9, 2, dtype=torch.long), category=CATEGORY,
                       log_popularity=torch.log1p(COUNTS.float()))


def model(**kw) -> CrossCategoryModel:
    cfg = ModelConfig(embedding_dim=4, hidden_dim=8, hash_buckets=16, max_tokens=2, item_bias=True,
                      content_encoder="none", **kw)
    return CrossCategoryModel(cfg, SIZES, content())


@pytest.mark.parametrize("history_encoder", ["none", "mean", "attention", "category_attention"])
def test_untrained_model_ranks_exactly_like_per_category_popularity(history_encoder):
    m = model(history_encoder=history_encoder).eval()
    users = torch.tensor([1, 2, 3, 4, 1, 2])
    history = torch.tensor([[6, 2, 0], [1, 0, 0], [0, 0, 0], [7, 8, 3], [6, 2, 0], [1, 0, 0]])
    cats = torch.tensor([1, 1, 1, 1, 2, 2])
    with torch.no_grad():
        u = m.user_vectors(users, history, cats)
        for k, items in ((1, [1, 2, 3, 4, 5]), (2, [6, 7, 8])):
            v = m.item_vectors(torch.tensor(items))
            rows = (cats == k).numpy()
            scores = (u[cats == k] @ v.T).numpy()
            ranked = np.asarray(items)[top_k(scores, len(items))]
            # per-category popularity: train count descending, ties by lower item id
            expected = sorted(items, key=lambda i: (-int(COUNTS[i]), i))
            assert rows.sum() > 0
            assert (ranked == np.asarray(expected)).all(), (k, ranked, expected)
    assert u.shape[1] == 5 and v.shape[1] == 5   # D + 1: the bias rides along as a dimension


def test_category_softmax_is_cross_entropy_over_the_category_items():
    cfg = ModelConfig(loss=LossKind.SOFTMAX, temperature=0.5)
    loss = MultiTaskLoss(cfg, n_categories=2)
    catalogue = Catalogue(CATEGORY, COUNTS, seed=0)
    table = torch.randn(9, 3, generator=torch.Generator().manual_seed(1))
    u = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    batch = {"category_idx": torch.tensor([1, 2, 1]), "item_idx": torch.tensor([2, 7, 5]),
             "label": torch.tensor([1.0, 1.0, 1.0]), "weight": torch.tensor([1.0, 1.0, 1.0])}
    total, per_k = loss(u, table[batch["item_idx"]], batch, None, catalogue, lambda idx: table[idx])
    c1, c2 = torch.arange(1, 6), torch.arange(6, 9)
    l1 = F.cross_entropy(u[[0, 2]] @ table[c1].T / 0.5, torch.tensor([1, 4]))
    l2 = F.cross_entropy(u[[1]] @ table[c2].T / 0.5, torch.tensor([1]))
    assert per_k[1] == pytest.approx(float(l1), rel=1e-5) and per_k[2] == pytest.approx(float(l2), rel=1e-5)
    assert float(total) == pytest.approx(float(l1 + l2) / 2, rel=1e-5)


def test_large_category_uses_a_uniform_pool_with_log_q():
    cfg = ModelConfig(loss=LossKind.SOFTMAX, temperature=1.0, softmax_full_max_items=2, softmax_pool=2)
    loss = MultiTaskLoss(cfg, n_categories=2)
    catalogue = Catalogue(CATEGORY, COUNTS, seed=0)
    table = torch.zeros(9, 3)   # all logits 0: the loss is then a function of log Q alone
    u = torch.ones(1, 3)
    batch = {"category_idx": torch.tensor([1]), "item_idx": torch.tensor([2]),
             "label": torch.tensor([1.0]), "weight": torch.tensor([1.0])}
    _, per_k = loss(u, table[batch["item_idx"]], batch, None, catalogue, lambda idx: table[idx])
    # The pool of 2 drawn from 5 items plus the positive; log Q = log(2/5 + 1 * share).
    gen = torch.Generator().manual_seed(0)
    drawn = torch.arange(1, 6)[uniform_subset(5, 2, gen)]
    assert drawn.unique().numel() == 2   # without repeats: the pool's inclusion chance is exactly 2/5
    candidates = torch.unique(torch.cat([drawn, torch.tensor([2])]))
    share = COUNTS[candidates].double() / COUNTS[1:6].sum()
    log_q = torch.log(2 / 5 + share)
    target = int(torch.searchsorted(candidates, torch.tensor(2)))
    expected = F.cross_entropy(-log_q.float().unsqueeze(0), torch.tensor([target]))
    assert per_k[1] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("n, size", [(10, 3), (40, 3), (7, 7), (5, 9), (1000, 450)])
def test_uniform_subset_draws_distinct_positions_each_equally_often(n, size):
    gen = torch.Generator().manual_seed(0)
    draws = [uniform_subset(n, size, gen) for _ in range(4000)]
    assert all(d.numel() == min(n, size) and d.unique().numel() == d.numel() for d in draws)
    counts = torch.bincount(torch.cat(draws), minlength=n).double()
    expected = 4000 * min(n, size) / n
    # Each position is in a subset with chance size / n: binomial spread, 5 standard deviations.
    p = min(n, size) / n
    assert float((counts - expected).abs().max()) <= 5 * (4000 * p * (1 - p)) ** 0.5 + 1e-9


def test_softmax_training_adds_to_the_prior():
    torch.manual_seed(0)
    m = model(loss=LossKind.SOFTMAX, temperature=1.0, history_encoder="mean")
    loss = MultiTaskLoss(m.cfg, n_categories=2)
    catalogue = Catalogue(CATEGORY, COUNTS, seed=0)
    # user 1 always takes item 4 (no train positive in the prior), user 2 item 8
    batch = {"user_idx": torch.tensor([1, 2] * 8), "history": torch.tensor([[5, 0, 0], [6, 0, 0]] * 8),
             "item_idx": torch.tensor([4, 8] * 8), "category_idx": torch.tensor([1, 2] * 8),
             "label": torch.ones(16), "weight": torch.ones(16)}
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        u, v = m.encode(batch)
        total, _ = loss(u, v, batch, None, catalogue, m.item_vectors)
        first = float(total.detach()) if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert float(total.detach()) < 0.5 * first
    m.eval()
    with torch.no_grad():
        u = m.user_vectors(torch.tensor([1]), torch.tensor([[5, 0, 0]]), torch.tensor([1]))
        scores = u @ m.item_vectors(torch.arange(1, 6)).T
    assert int(scores.argmax()) + 1 == 4
    assert math.isfinite(float(scores.sum()))
