"""Small synthetic data with planted cross-category taste, for the model's learning tests.

Users belong to taste clusters; items of every category belong to clusters too; a user picks
mostly items of their own cluster in every category they are active in. For some users one
active category is held out entirely (a cross-category pair: the user never touched it in
training), and the model must rank that category's items from the user's other categories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from xrec_spark.config import ModelConfig
from xrec_spark.model.content import ItemContent
from xrec_spark.model.losses import MultiTaskLoss
from xrec_spark.model.towers import CrossCategoryModel, ModelSizes


@dataclass
class Planted:
    n_users: int
    n_items: int
    n_categories: int
    item_category: np.ndarray          # [n_items + 1], 0 at padding
    item_cluster: np.ndarray           # [n_items + 1]
    item_text: list[str | None]        # [n_items + 1]
    train_count: np.ndarray            # [n_items + 1]
    examples: dict[str, torch.Tensor]  # user_idx, history, item_idx, category_idx, label, weight
    test_users: np.ndarray             # [G] held-out (user, category) groups
    test_categories: np.ndarray        # [G]
    test_history: np.ndarray           # [G, L]
    test_relevant: list[set[int]]      # [G]

    def content(self, cfg: ModelConfig) -> ItemContent:
        frame = pd.DataFrame({"item_idx": np.arange(1, self.n_items + 1),
                              "category_idx": self.item_category[1:],
                              "text": self.item_text[1:], "train_count": self.train_count[1:]})
        return ItemContent.from_frame(frame, cfg, self.n_items)


def planted_taste(n_users: int = 2000, n_categories: int = 4, items_per_category: int = 120,
                  clusters: int = 5, per_category: int = 4, history_length: int = 10,
                  negatives: int = 4, affinity: float = 0.85, seed: int = 0) -> Planted:
    """Generate the data set (see module docstring); everything comes from ``seed``."""
    rng = np.random.default_rng(seed)
    n_items = n_categories * items_per_category
    item_category = np.concatenate([[0], np.repeat(np.arange(1, n_categories + 1), items_per_category)])
    item_cluster = np.concatenate([[0], rng.integers(0, clusters, n_items)])
    popularity = np.concatenate([[0.0], rng.zipf(2.0, n_items).clip(max=50).astype(float)])
    vocab = [f"w{j}" for j in range(60)]
    item_text: list[str | None] = [None] + [f"category{item_category[i]} " + " ".join(rng.choice(vocab, 3))
                                            for i in range(1, n_items + 1)]
    by_cat = {k: np.flatnonzero(item_category == k) for k in range(1, n_categories + 1)}
    by_cat_cluster = {(k, c): items[item_cluster[items] == c] for k, items in by_cat.items() for c in range(clusters)}

    pools = {**{(k, c): p for (k, c), p in by_cat_cluster.items()}, **{(k, None): p for k, p in by_cat.items()}}
    cumulative = {key: np.cumsum(popularity[p]) / popularity[p].sum() for key, p in pools.items()}

    def pick(k: int, c: int) -> int:
        key = (k, c) if rng.random() < affinity else (k, None)
        pos = min(int(np.searchsorted(cumulative[key], rng.random())), len(pools[key]) - 1)
        return int(pools[key][pos])

    rows: dict[str, list] = {k: [] for k in ("user_idx", "history", "item_idx", "category_idx", "label")}
    train_count = np.zeros(n_items + 1)
    test_users, test_cats, test_hist, test_rel = [], [], [], []
    for u in range(1, n_users + 1):
        cluster = int(rng.integers(clusters))
        active = rng.choice(np.arange(1, n_categories + 1), size=int(rng.integers(2, 4)), replace=False)
        held = int(active[0]) if rng.random() < 0.5 else None
        seq = [pick(int(k), cluster) for k in active for _ in range(per_category)]
        rng.shuffle(seq)
        train = [i for i in seq if item_category[i] != held]
        for t, item in enumerate(train):
            hist = _history(train[:t], history_length)
            k = int(item_category[item])
            train_count[item] += 1
            negs = by_cat[k][rng.integers(0, len(by_cat[k]), negatives)]
            cands = [(item, 1.0)] + [(int(x), 0.0) for x in negs]
            for cand, label in cands:
                rows["user_idx"].append(u)
                rows["history"].append(hist)
                rows["item_idx"].append(cand)
                rows["category_idx"].append(k)
                rows["label"].append(label)
        if held is not None:
            test_users.append(u)
            test_cats.append(held)
            test_hist.append(_history(train, history_length))
            test_rel.append({i for i in seq if item_category[i] == held})
    examples = {k: torch.tensor(np.array(v), dtype=torch.float32 if k == "label" else torch.long)
                for k, v in rows.items()}
    examples["weight"] = torch.ones_like(examples["label"])
    return Planted(n_users, n_items, n_categories, item_category, item_cluster, item_text, train_count,
                   examples, np.array(test_users), np.array(test_cats), np.array(test_hist), test_rel)


def _history(items: list[int], length: int) -> list[int]:
    """Most recent first, 0-padded at the end."""
    recent = items[::-1][:length]
    return recent + [0] * (length - len(recent))


def train_model(data: Planted, cfg: ModelConfig, epochs: int, batch_size: int = 512, lr: float = 5e-3,
                seed: int = 0) -> CrossCategoryModel:
    """Plain Adam training on all categories with the multi-task loss."""
    model = CrossCategoryModel(cfg, ModelSizes(data.n_users, data.n_items, data.n_categories), data.content(cfg))
    loss_fn = MultiTaskLoss(cfg, data.n_categories)
    opt = torch.optim.Adam([*model.parameters(), *loss_fn.parameters()], lr=lr)
    log_pop = model.item_tower.content_log_popularity
    gen = torch.Generator().manual_seed(seed)
    n = data.examples["label"].shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            batch = {k: v[idx] for k, v in data.examples.items()}
            u, v = model.encode(batch)
            loss, _ = loss_fn(u, v, batch, log_pop)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def cross_category_ndcg(model: CrossCategoryModel, data: Planted, k: int = 10) -> float:
    """Mean NDCG@k over held-out (user, category) groups, full ranking of the category's items."""
    users = torch.as_tensor(data.test_users, dtype=torch.long)
    cats = torch.as_tensor(data.test_categories, dtype=torch.long)
    u = model.user_vectors(users, torch.as_tensor(data.test_history, dtype=torch.long), cats)
    v = model.item_vectors(torch.arange(1, data.n_items + 1))
    scores = u @ v.T
    item_cat = torch.as_tensor(data.item_category[1:])
    scores[item_cat.unsqueeze(0) != cats.unsqueeze(1)] = float("-inf")
    top = torch.topk(scores, k, dim=1).indices + 1
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    for row, relevant in zip(top.tolist(), data.test_relevant):
        dcg = sum(d for item, d in zip(row, discounts) if item in relevant)
        total += dcg / discounts[: min(len(relevant), k)].sum()
    return total / len(data.test_relevant)


def popularity_ndcg(data: Planted, k: int = 10) -> float:
    """NDCG@k of ranking each category's items by train count (the reference floor)."""
    total = 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for cat, relevant in zip(data.test_categories, data.test_relevant):
        items = np.flatnonzero(data.item_category == cat)
        top = items[np.argsort(-data.train_count[items], kind="stable")[:k]]
        dcg = sum(d for item, d in zip(top, discounts) if int(item) in relevant)
        total += dcg / discounts[: min(len(relevant), k)].sum()
    return total / len(data.test_relevant)


# ------------------------------------------------------------------ tiny hand-made fixtures

TINY_SIZES = ModelSizes(n_users=5, n_items=8, n_categories=3)


def tiny_frame() -> pd.DataFrame:
    """Rows of silver.item_features for 8 items in 3 categories (item 4 has no text)."""
    return pd.DataFrame({
        "item_idx": [1, 2, 3, 4, 5, 6, 7, 8],
        "category_idx": [1, 1, 2, 2, 3, 3, 1, 2],
        "text": ["red running shoe", "blue shoe", "a history of rome", None, "space film", "film noir",
                 "green shoe", "rome guide"],
        "train_count": [5, 0, 2, 1, 3, 0, 1, 4],
    })


def tiny_config(**overrides) -> ModelConfig:
    """A small model config (8-dim) for unit tests."""
    return ModelConfig(**{"embedding_dim": 8, "hidden_dim": 16, "hash_buckets": 64, "max_tokens": 12,
                          "experts": 2, **overrides})


def tiny_batch() -> dict[str, torch.Tensor]:
    """Six examples over all three categories; user 0 and 7 have no id embedding (n_users=5)."""
    return {
        "user_idx": torch.tensor([1, 2, 3, 5, 0, 7]),
        "history": torch.tensor([[2, 3, 5, 0], [1, 0, 0, 0], [0, 0, 0, 0], [8, 6, 4, 2], [5, 1, 0, 0], [3, 3, 7, 0]]),
        "item_idx": torch.tensor([1, 3, 5, 7, 8, 6]),
        "category_idx": torch.tensor([1, 2, 3, 1, 2, 3]),
        "label": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0]),
        "weight": torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 0.5]),
    }


def tiny_model(**overrides) -> CrossCategoryModel:
    cfg = tiny_config(**overrides)
    return CrossCategoryModel(cfg, TINY_SIZES, ItemContent.from_frame(tiny_frame(), cfg, TINY_SIZES.n_items))
