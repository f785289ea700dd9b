"""Acceptance: on planted cross-category taste, sharing + the history encoder is what transfers.

The shared model with a history encoder must rank a category the user never touched in
training clearly better (NDCG@10, full ranking of the category's items) than the same model
without the history encoder, the model with no sharing across categories, and popularity.
Figures print with ``pytest -s``.
"""

from __future__ import annotations

import time

import pytest

from model_synthetic import cross_category_ndcg, planted_taste, popularity_ndcg, train_model
from xrec_spark.config import ModelConfig

BASE = dict(embedding_dim=32, hidden_dim=64, hash_buckets=1024, max_tokens=8)
MARGIN = 0.05


@pytest.mark.slow
def test_sharing_with_history_wins_on_cross_category_pairs(one_thread):
    data = planted_taste(n_users=1500, seed=0)
    figures = {"popularity": popularity_ndcg(data)}
    for name, extra in (("shared + mean history", {}), ("shared, no history encoder", {"history_encoder": "none"}),
                        ("no sharing (per category)", {"share_across_categories": False})):
        start = time.perf_counter()
        model = train_model(data, ModelConfig(**BASE, **extra), epochs=3)
        figures[name] = cross_category_ndcg(model, data)
        print(f"\n{name:28s} NDCG@10 {figures[name]:.4f}  ({time.perf_counter() - start:.1f} s)", end="")
    print(f"\n{'popularity':28s} NDCG@10 {figures['popularity']:.4f}; "
          f"{len(data.test_relevant)} held-out (user, category) groups, "
          f"{data.examples['label'].shape[0]} training examples")
    best = figures["shared + mean history"]
    for other in ("popularity", "shared, no history encoder", "no sharing (per category)"):
        assert best > figures[other] + MARGIN, f"{other}: {figures[other]:.4f} vs {best:.4f}"
