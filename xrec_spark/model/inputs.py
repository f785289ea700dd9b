"""Checks of what the model is given: batch keys, dtypes, shapes and id ranges, each failing
with a message that names the key and the bad value (a wrong id otherwise surfaces as an
index error deep in an embedding lookup).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

BATCH_KEYS = ("user_idx", "history", "item_idx", "category_idx")


def check_category(k: int, n_categories: int) -> None:
    """Category ``k`` is one the model has (1..n_categories)."""
    if not 1 <= k <= n_categories:
        raise ValueError(f"category_idx {k} outside 1..{n_categories} (model's n_categories); "
                         "add it with transfer.init_new_category_head")


def check_items(idx: Tensor, name: str, content_rows: int) -> None:
    """``idx`` is a long tensor of item ids the item content covers (0..content_rows-1)."""
    if idx.dtype != torch.long:
        raise TypeError(f"batch[{name!r}] must be a long tensor, got {idx.dtype}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= content_rows):
        bad = int(idx.max()) if int(idx.min()) >= 0 else int(idx.min())
        raise ValueError(f"batch[{name!r}] has item_idx {bad}; the item content covers 0.."
                         f"{content_rows - 1}: call set_content with content for new items")


def check_batch(batch: Mapping[str, Tensor], n_categories: int,
                content_rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(user_idx ``[B]``, history ``[B, L]``, item_idx ``[B]``, category_idx ``[B]``) of a
    valid model batch."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"model batch lacks keys {missing}; got {sorted(batch)}")
    user_idx, history, item_idx, category_idx = (batch[k] for k in BATCH_KEYS)
    for name, t, dims in (("user_idx", user_idx, 1), ("history", history, 2), ("category_idx", category_idx, 1)):
        if t.dtype != torch.long or t.dim() != dims:
            raise TypeError(f"batch[{name!r}] must be a {dims}-d long tensor, got {t.dtype} {tuple(t.shape)}")
    n = item_idx.shape[0]
    if user_idx.shape[0] != n or history.shape[0] != n or category_idx.shape[0] != n:
        raise ValueError(f"batch sizes differ: user_idx {user_idx.shape[0]}, history {history.shape[0]}, "
                         f"item_idx {n}, category_idx {category_idx.shape[0]}")
    check_items(item_idx, "item_idx", content_rows)
    check_items(history, "history", content_rows)
    if n and (int(category_idx.min()) < 1 or int(category_idx.max()) > n_categories):
        bad = int(category_idx.min()) if int(category_idx.min()) < 1 else int(category_idx.max())
        check_category(bad, n_categories)
    if n and int(user_idx.min()) < 0:
        raise ValueError(f"batch['user_idx'] has negative id {int(user_idx.min())}")
    return user_idx, history, item_idx, category_idx
