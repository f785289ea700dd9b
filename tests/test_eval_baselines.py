"""Full-ranking scorer and the baselines (popularity, ALS) on hand-made data."""

from __future__ import annotations

from datetime import datetime

import pytest

from xrec_spark.config import EvalConfig
from xrec_spark.eval import columns as C
from xrec_spark.eval.baselines import (
    als_rankings,
    popularity_category,
    popularity_global,
    seen_before,
    tune_als,
)
from xrec_spark.eval.metrics import system_rankings
from xrec_spark.ranking.spark import rank_by_vectors
from xrec_spark.tables import INTERACTIONS

TS = datetime(2020, 1, 1)


def lists_of(rankings) -> dict[tuple[str, int, int], list[int]]:
    out: dict[tuple[str, int, int], list[tuple[int, int]]] = {}
    for r in rankings.collect():
        out.setdefault((r[C.SYSTEM], r[C.USER], r[C.CATEGORY]), []).append((r[C.RANK], r[C.ITEM]))
    return {key: [item for _, item in sorted(v)] for key, v in out.items()}


def test_rank_by_vectors_full_ranking_exclusion_and_ties(spark):
    items = spark.createDataFrame(
        [(10, 1, [1.0]), (11, 1, [2.0]), (12, 1, [2.0]), (13, 1, [0.5]), (20, 2, [5.0])],
        "item_idx int, category_idx int, vector array<float>")
    users = spark.createDataFrame([(1, 1, [1.0]), (2, 1, [-1.0]), (1, 2, [1.0])],
                                  "user_idx int, category_idx int, vector array<float>")
    seen = spark.createDataFrame([(1, 11), (2, 99)], "user_idx int, item_idx int")
    got = system_rankings(rank_by_vectors(users, items, 3, seen, block_size=1), "s")
    assert lists_of(got) == {
        ("s", 1, 1): [12, 10, 13],        # 11 was seen
        ("s", 2, 1): [13, 10, 11],        # -2 tie between 11 and 12: lower id first
        ("s", 1, 2): [20],                # k larger than the category
    }
    scores = {(r[C.USER], r[C.ITEM]): r[C.SCORE] for r in got.collect() if r[C.CATEGORY] == 1}
    assert scores[(1, 12)] == pytest.approx(2.0) and scores[(2, 13)] == pytest.approx(-0.5)


def test_rank_by_vectors_rejects_mismatched_dimensions(spark):
    items = spark.createDataFrame([(10, 1, [1.0, 2.0])], "item_idx int, category_idx int, vector array<float>")
    users = spark.createDataFrame([(1, 1, [1.0])], "user_idx int, category_idx int, vector array<float>")
    seen = spark.createDataFrame([], "user_idx int, item_idx int")
    with pytest.raises(Exception, match="user vectors have 1 dims, item vectors 2"):
        system_rankings(rank_by_vectors(users, items, 3, seen), "s").collect()


CATALOGUE = [  # item, category, train_count
    (10, 1, 5), (11, 1, 9), (12, 1, 5), (13, 1, 0),
    (20, 2, 7), (21, 2, 1),
]


def test_popularity_baselines(spark):
    features = spark.createDataFrame(CATALOGUE, "item_idx int, category_idx int, train_count long")
    pairs = spark.createDataFrame([(1, 1), (1, 2), (2, 1)], "user_idx int, category_idx int")
    seen = spark.createDataFrame([(1, 11), (2, 20)], "user_idx int, item_idx int")
    cat = lists_of(popularity_category(pairs, features, seen, 3, 64))
    assert cat == {
        ("popularity_category", 1, 1): [10, 12, 13],    # 11 seen; 10 and 12 tie at 5: lower id first
        ("popularity_category", 1, 2): [20, 21],
        ("popularity_category", 2, 1): [11, 10, 12],
    }
    glob = lists_of(popularity_global(pairs, features, seen, 3, 64))
    assert glob == {
        ("popularity_global", 1, 1): [20, 10, 12],      # the same global list for both categories
        ("popularity_global", 1, 2): [20, 10, 12],
        ("popularity_global", 2, 1): [11, 10, 12],      # 20 seen by user 2
    }


def test_seen_before_depends_on_split(spark):
    rows = [(1, 10, 1, TS, 5.0, 1, 1.0, "train", None), (1, 11, 1, TS, 5.0, 0, 1.0, "valid", "warm"),
            (1, 12, 1, TS, 5.0, 1, 1.0, "test", "warm")]
    inter = spark.createDataFrame(rows, INTERACTIONS.schema)
    assert {r[C.ITEM] for r in seen_before(inter, C.VALID).collect()} == {10}
    assert {r[C.ITEM] for r in seen_before(inter, C.TEST).collect()} == {10, 11}


@pytest.mark.slow
def test_als_tuned_on_valid_ranks_within_category(spark):
    # Two taste groups: users 1-4 like items 10-13 (category 1), users 5-8 like 14-17 (category 1)
    # and 20-23 (category 2). Valid positives follow the same tastes.
    rows = []
    for u in range(1, 9):
        liked = [10, 11, 12, 13] if u <= 4 else [14, 15, 16, 17, 20, 21, 22]
        for i in liked:
            if (u + i) % 4 != 0:
                rows.append((u, i, 1 if i < 20 else 2, TS, 5.0, 1, 1.0, "train", None))
        held = [i for i in liked if (u + i) % 4 == 0]
        for i in held:
            rows.append((u, i, 1 if i < 20 else 2, TS, 5.0, 1, 1.0, "valid", "warm"))
    rows.append((9, 30, 1, TS, 5.0, 1, 1.0, "valid", "cold_item"))   # a cold item: ALS cannot rank it
    inter = spark.createDataFrame(rows, INTERACTIONS.schema)
    features = spark.createDataFrame(
        [(i, 1 if i < 20 or i == 30 else 2, 1) for i in [*range(10, 18), *range(20, 24), 30]],
        "item_idx int, category_idx int, train_count long")
    # Stage 1: reg x alpha at rank 2 (4 points); stage 2: ranks 2 (already tried) and 4 at the best.
    cfg = EvalConfig(als_base_rank=2, als_ranks=[2, 4], als_reg_params=[0.01, 1.0], als_alphas=[1.0, 5.0],
                     als_max_iter=5, tune_k=3)
    factors, grid = tune_als(inter, features, cfg, block_size=64)
    stage1 = max(grid[:4], key=lambda g: g[1])[0]
    assert [(p.rank, p.reg_param, p.alpha) for p, _, _ in grid] == [
        (2, 0.01, 1.0), (2, 0.01, 5.0), (2, 1.0, 1.0), (2, 1.0, 5.0), (4, stage1.reg_param, stage1.alpha)]
    assert all(n == 12 for _, _, n in grid)  # valid (user, category) pairs: 8 in category 1, 3 in 2, user 9
    assert factors.params == max(grid, key=lambda g: g[1])[0]   # the best valid point of all tried
    pairs = spark.createDataFrame([(1, 1), (6, 2), (9, 1)], "user_idx int, category_idx int")
    seen = seen_before(inter, C.VALID)
    got = lists_of(als_rankings(factors, pairs, features, seen, 10, 64))
    assert ("als", 9, 1) not in got                          # no factors for a cold user
    user1 = got[("als", 1, 1)]
    train1 = {r[1] for r in rows if r[0] == 1 and r[7] == "train"}
    assert not train1 & set(user1) and 30 not in user1        # seen and cold items never ranked
    assert set(user1) == set(range(10, 18)) - train1          # every other category-1 item
    assert got[("als", 6, 2)] == [22]                        # 20, 21 seen; 23 has no factors
    # A one-point search has nothing to choose: fitted without a valid pass (NaN over 0 groups).
    one = EvalConfig(als_base_rank=2, als_ranks=[2], als_reg_params=[0.01], als_alphas=[1.0], als_max_iter=5)
    single, grid1 = tune_als(inter, features, one, block_size=64)
    assert len(grid1) == 1 and grid1[0][0] == single.params and grid1[0][1] != grid1[0][1] and grid1[0][2] == 0
