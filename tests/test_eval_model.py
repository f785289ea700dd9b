"""The model's evaluation rankings, computed from a real (tiny) checkpoint, equal the numpy
reference ranking of the model's own scores (user_vectors . item_vectors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from batch_fixtures import HISTORY, ITEM_CATEGORY, SEEN, TEXT, TRAIN_COUNT, write_run, write_silver
from conftest import make_config
from xrec_spark.lineage import model_run
from xrec_spark.config import ModelConfig
from xrec_spark.eval import columns as C
from xrec_spark.eval.model_rankings import model_rankings
from xrec_spark.ranking.dense import ranked_items
from xrec_spark.model import CrossCategoryModel, ItemContent, ModelSizes, save_model

MODEL = ModelConfig(embedding_dim=8, hidden_dim=8, hash_buckets=64, max_tokens=8, seed=11)
SIZES = ModelSizes(n_users=5, n_items=8, n_categories=3)
PAIRS = [(1, 1), (1, 3), (2, 2), (3, 3), (4, 1), (5, 3)]   # (3, 3): item 9 is new, ranked from content


def _content(n_items: int) -> ItemContent:
    items = [i for i in ITEM_CATEGORY if i <= n_items]
    frame = pd.DataFrame({"item_idx": items, "category_idx": [ITEM_CATEGORY[i] for i in items],
                          "text": [TEXT[i] for i in items], "train_count": [TRAIN_COUNT[i] for i in items]})
    return ItemContent.from_frame(frame, MODEL, n_items)


@pytest.mark.slow
def test_model_rankings_from_checkpoint_equal_reference(lakehouse, lakehouse_root, tmp_path):
    model = CrossCategoryModel(MODEL, SIZES, _content(8)).eval()
    path = tmp_path / "ckpt" / "m1.pt"
    save_model(path, model, {"model_version": "m1"})
    model.set_content(_content(9))
    write_silver(lakehouse)
    write_run(lakehouse, "m1", path)
    cfg = make_config(lakehouse_root, features={"history_length": 4}, eval={"users_per_block": 2})
    spark = lakehouse.spark
    pairs = spark.createDataFrame(PAIRS, "user_idx int, category_idx int")
    seen = spark.createDataFrame(SEEN, "user_idx int, item_idx int")
    rankings, counts, handle = model_rankings(lakehouse, cfg, model_run(lakehouse), pairs, seen, 3, "model")
    got = rankings.collect()
    handle.release()
    assert counts == {"computed_user_pairs": len(PAIRS), "exported_item_vectors": 0}

    lists: dict[tuple[int, int], list[int]] = {}
    for r in sorted(got, key=lambda r: (r[C.USER], r[C.CATEGORY], r[C.RANK])):
        lists.setdefault((r[C.USER], r[C.CATEGORY]), []).append(r[C.ITEM])
    seen_by_user = {}
    for u, i in SEEN:
        seen_by_user.setdefault(u, set()).add(i)
    with torch.no_grad():
        for user, category in PAIRS:
            items = np.array(sorted(i for i, c in ITEM_CATEGORY.items() if c == category))
            u = model.user_vectors(torch.tensor([user]), torch.tensor([HISTORY[user]]), torch.tensor([category]))
            scores = (u @ model.item_vectors(torch.from_numpy(items)).T).numpy()
            mask = np.isin(items, list(seen_by_user.get(user, ())))[None, :]
            want = [int(i) for i in ranked_items(scores, items, 3, mask)[0] if i != 0]
            assert lists.get((user, category), []) == want, (user, category)
