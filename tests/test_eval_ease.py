"""EASE on a hand-computed 4-item example: the weights, and the rankings within a category."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from xrec_spark.config import EvalConfig
from xrec_spark.eval import columns as C
from xrec_spark.eval.baselines import ease_rankings, tune_ease
from xrec_spark.eval.ease import collect_ease_data, ease_weights, gram_matrix
from xrec_spark.tables import INTERACTIONS

TS = datetime(2020, 1, 1)

# Train positives over items a=10, b=11, c=12 (category 1) and d=13 (category 2):
#   user 1: a b    user 2: a b c    user 3: b c    user 4: c d
POSITIVES = [(1, 10), (1, 11), (2, 10), (2, 11), (2, 12), (3, 11), (3, 12), (4, 12), (4, 13)]
# XᵀX = [[2,2,1,0],[2,3,2,0],[1,2,3,1],[0,0,1,1]]. With λ = 1, det(XᵀX + I) = 40 and
# P = (XᵀX + I)⁻¹ = adj / 40 with adj = [[20,-10,0,0],[-10,19,-8,4],[0,-8,16,-8],[0,4,-8,24]],
# so B_ij = -P_ij / P_jj (i != j), B_ii = 0:
EXPECTED_B = np.array([
    [0.0, 10 / 19, 0.0, 0.0],
    [10 / 20, 0.0, 8 / 16, -4 / 24],
    [0.0, 8 / 19, 0.0, 8 / 24],
    [0.0, -4 / 19, 8 / 16, 0.0],
])
# Catalogue: item, category, train_count. 14 and 15 (category 1) are outside N = 4: 15 (count 1)
# loses the count-1 tie with 13 (lower id wins the last slot) and ranks above 14 (count 0).
CATALOGUE = [(10, 1, 2), (11, 1, 3), (12, 1, 3), (13, 2, 1), (14, 1, 0), (15, 1, 1)]


def _gram() -> np.ndarray:
    cols = {10: 0, 11: 1, 12: 2, 13: 3}
    rows: dict[int, list[int]] = {}
    for u, i in POSITIVES:
        rows.setdefault(u, []).append(cols[i])
    return gram_matrix({u: np.array(c) for u, c in rows.items()}, 4)


def test_gram_and_weights_match_the_hand_computation():
    gram = _gram()
    assert gram.tolist() == [[2, 2, 1, 0], [2, 3, 2, 0], [1, 2, 3, 1], [0, 0, 1, 1]]
    weights = ease_weights(gram, 1.0)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights, EXPECTED_B, atol=1e-6)
    with pytest.raises(ValueError, match="ease_lambdas"):
        ease_weights(gram, 0.0)


def _frames(spark):
    positives = spark.createDataFrame(POSITIVES, "user_idx int, item_idx int")
    features = spark.createDataFrame(CATALOGUE, "item_idx int, category_idx int, train_count long")
    return positives, features


def test_rankings_within_category_outside_n_by_popularity_and_seen_excluded(spark):
    positives, features = _frames(spark)
    data = collect_ease_data(positives, features, n_items=4)
    assert data.items.tolist() == [11, 12, 10, 13]          # by train_count, then lower id
    order = np.argsort(data.items)                          # B's columns follow data.items
    np.testing.assert_allclose(data.gram[np.ix_(order, order)], _gram())

    from xrec_spark.eval.baselines import EaseFit
    fit = EaseFit(data, ease_weights(data.gram, 1.0), 1.0, [], 0.0, 0.0)
    pairs = spark.createDataFrame([(4, 1), (1, 1), (1, 2), (9, 1)], "user_idx int, category_idx int")
    seen = spark.createDataFrame([*POSITIVES, (1, 15)], "user_idx int, item_idx int")
    got = ease_rankings(fit, pairs, seen, k=5).collect()
    lists: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for r in sorted(got, key=lambda r: r[C.RANK]):
        assert r[C.SYSTEM] == "ease"
        lists.setdefault((r[C.USER], r[C.CATEGORY]), []).append((r[C.ITEM], r[C.SCORE]))
    # user 4 (c, d) in category 1: x·B = [0, 4/19, 0.5] for 10, 11, 12; 12 is seen. 10 scores 0
    # and still ranks above the outside-N items, which follow by popularity (15, then 14).
    u4 = lists[(4, 1)]
    assert [i for i, _ in u4] == [11, 10, 15, 14]
    assert u4[0][1] == pytest.approx(4 / 19) and u4[1][1] == pytest.approx(0.0)
    assert u4[1][1] > u4[2][1] > u4[3][1]                  # scores order like ranks
    # user 1 (a, b): category 1 -> 12 (score 0.5), then 14 (15 was seen); category 2 -> 13, the
    # cross-category link d <- b (B_bd = -1/6).
    assert [i for i, _ in lists[(1, 1)]] == [12, 14]
    assert lists[(1, 1)][0][1] == pytest.approx(0.5)
    assert lists[(1, 2)] == [(13, pytest.approx(-1 / 6))]
    assert (9, 1) not in lists                               # no train positive: no list


def test_tune_ease_tries_every_lambda_and_keeps_the_best_on_valid(spark):
    rows = [(u, i, 1 if i != 13 else 2, TS, 5.0, 1, 1.0, "train", None) for u, i in POSITIVES]
    # Valid: user 1 takes 12 in category 1, user 3 takes 10.
    rows += [(1, 12, 1, TS, 5.0, 1, 1.0, "valid", "warm"), (3, 10, 1, TS, 5.0, 1, 1.0, "valid", "warm")]
    inter = spark.createDataFrame(rows, INTERACTIONS.schema)
    _, features = _frames(spark)
    fit = tune_ease(inter, features, EvalConfig(ease_items=4, ease_lambdas=[0.5, 1.0, 50.0], tune_k=3))
    assert [lam for lam, _, _ in fit.grid] == [0.5, 1.0, 50.0]
    assert all(n == 2 for _, _, n in fit.grid)
    assert fit.lam == max(fit.grid, key=lambda g: g[1])[0]
    assert fit.weights.shape == (4, 4) and fit.seconds > 0 and fit.peak_rss_gib > 0
    # The driver-side NDCG used for the choice equals the Spark metrics on the same rankings.
    from xrec_spark.eval.baselines import _valid_setup, valid_ndcg
    groups, pairs, seen = _valid_setup(inter)
    spark_ndcg, n = valid_ndcg(ease_rankings(fit, pairs, seen, 3), groups, 3)
    assert n == 2 and spark_ndcg == pytest.approx(dict((g[0], g[1]) for g in fit.grid)[fit.lam])
    # One lambda: nothing to choose, fitted without a valid pass (NaN over 0 groups), same weights.
    one = tune_ease(inter, features, EvalConfig(ease_items=4, ease_lambdas=[fit.lam], tune_k=3))
    assert one.lam == fit.lam and one.grid[0][1] != one.grid[0][1] and one.grid[0][2] == 0
    assert np.array_equal(one.weights, fit.weights)
