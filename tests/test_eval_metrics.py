"""Spark per-group metrics, coverage/popularity and the bootstrap summary."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from xrec_spark.eval import columns as C
from xrec_spark.eval.bootstrap import summarize
from xrec_spark.eval.metrics import coverage_and_popularity, group_metrics, ranked_lists, relevant_groups
from xrec_spark.eval.reference_metrics import rank_metrics
from xrec_spark.tables import INTERACTIONS, SchemaMismatchError

TS = datetime(2020, 1, 1)
RANK_SCHEMA = "system string, user_idx int, category_idx int, rank int, item_idx int, score double"


def interactions(spark, rows):
    """rows: (user, item, category, label, split, slice)."""
    full = [(u, i, c, TS, 5.0, lab, 1.0, s, sl) for u, i, c, lab, s, sl in rows]
    return spark.createDataFrame(full, INTERACTIONS.schema)


INTERACTION_ROWS = [
    # train rows never count
    (1, 10, 1, 1, "train", None), (1, 11, 1, 1, "train", None), (2, 20, 2, 1, "train", None),
    # user 1, category 1: two warm positives and one cold item -> groups warm, cold_item, all
    (1, 12, 1, 1, "test", "warm"), (1, 13, 1, 1, "test", "warm"), (1, 19, 1, 1, "test", "cold_item"),
    (1, 14, 1, 0, "test", "warm"),            # a negative label is not relevant
    # user 2, category 1: cross-category
    (2, 12, 1, 1, "test", "cross_category"),
    # user 2, category 2: valid only -> not a test group
    (2, 21, 2, 1, "valid", "warm"),
]


def test_relevant_groups(spark):
    got = relevant_groups(interactions(spark, INTERACTION_ROWS), "test").toPandas()
    got = {(r.user_idx, r.category_idx, r.slice): list(r.relevant) for r in got.itertuples()}
    assert got == {
        (1, 1, "warm"): [12, 13], (1, 1, "cold_item"): [19], (1, 1, "all"): [12, 13, 19],
        (2, 1, "cross_category"): [12], (2, 1, "all"): [12],
    }
    with pytest.raises(ValueError, match="eval split must be"):
        relevant_groups(interactions(spark, INTERACTION_ROWS), "train")


def test_group_metrics_hand_computed(spark):
    groups = relevant_groups(interactions(spark, INTERACTION_ROWS), "test")
    rankings = spark.createDataFrame([
        # system a: user 1 list [12, 15, 19]; user 2 list [15, 12]
        ("a", 1, 1, 1, 12, 0.9), ("a", 1, 1, 2, 15, 0.8), ("a", 1, 1, 3, 19, 0.7),
        ("a", 2, 1, 2, 12, 0.5), ("a", 2, 1, 1, 15, 0.6),    # ranks out of row order on purpose
        # system b: a list only for user 2 (user 1 must still be scored, as all misses)
        ("b", 2, 1, 1, 12, 1.0),
    ], RANK_SCHEMA)
    out = group_metrics(ranked_lists(rankings), groups, [1, 3]).toPandas()
    value = {(r.system, r.user_idx, r.slice, r.metric, r.k): r.value for r in out.itertuples()}
    assert len(out) == 2 * 5 * 4 * 2          # systems x groups x metrics x ks
    l3, l4 = 1 / math.log2(3), 1 / math.log2(4)
    assert value[("a", 1, "warm", "recall", 3)] == pytest.approx(0.5)
    assert value[("a", 1, "warm", "ndcg", 3)] == pytest.approx(1 / (1 + l3))
    assert value[("a", 1, "cold_item", "ndcg", 3)] == pytest.approx(l4)
    assert value[("a", 1, "cold_item", "mrr", 3)] == pytest.approx(1 / 3)
    assert value[("a", 1, "cold_item", "hit_rate", 1)] == 0.0
    assert value[("a", 1, "all", "ndcg", 3)] == pytest.approx((1 + l4) / (1 + l3 + l4))
    assert value[("a", 1, "all", "recall", 1)] == pytest.approx(1 / 3)
    assert value[("a", 2, "cross_category", "mrr", 3)] == pytest.approx(0.5)
    assert value[("a", 2, "cross_category", "ndcg", 1)] == 0.0
    assert value[("b", 1, "all", "recall", 3)] == 0.0
    assert value[("b", 2, "all", "ndcg", 1)] == 1.0


def test_spark_equals_numpy_reference_on_random_case(spark):
    rng = np.random.default_rng(21)
    rank_rows, inter_rows, ranked, relevant = [], [], [], []
    for user in range(1, 61):
        category = int(rng.integers(1, 4))
        n_list = int(rng.integers(0, 15))
        items = rng.choice(np.arange(1, 40), size=n_list, replace=False)
        rank_rows += [("s", user, category, r + 1, int(i), 0.0) for r, i in enumerate(items)]
        rel = rng.choice(np.arange(1, 40), size=int(rng.integers(1, 5)), replace=False)
        inter_rows += [(user, int(i), category, 1, "test", "warm") for i in rel]
        ranked.append(np.pad(items, (0, 15 - n_list)))
        relevant.append(rel)
    groups = relevant_groups(interactions(spark, inter_rows), "test", with_all=False)
    got = (group_metrics(ranked_lists(spark.createDataFrame(rank_rows, RANK_SCHEMA)), groups, [1, 5, 20])
           .toPandas().set_index([C.USER, C.METRIC, C.K])[C.VALUE])
    want = rank_metrics(np.stack(ranked), relevant, [1, 5, 20])
    for name, values in want.items():
        metric, k = name.split("@")
        spark_values = np.array([got[(u, metric, int(k))] for u in range(1, 61)])
        np.testing.assert_allclose(spark_values, values, err_msg=name)


def test_missing_columns_are_named(spark):
    df = spark.createDataFrame([(1, 2)], "user_idx int, item_idx int")
    with pytest.raises(SchemaMismatchError, match="missing columns system, category_idx, rank"):
        ranked_lists(df)


def test_coverage_and_popularity(spark):
    catalogue = spark.createDataFrame(
        [(10, 1, 3), (11, 1, 0), (12, 1, 1), (13, 1, 0), (20, 2, 7), (21, 2, 0)],
        "item_idx int, category_idx int, train_count long")
    rankings = spark.createDataFrame([
        ("a", 1, 1, 1, 10, 1.0), ("a", 1, 1, 2, 12, 0.5),
        ("a", 2, 1, 1, 10, 1.0), ("a", 2, 1, 2, 11, 0.5),
        ("a", 3, 1, 1, 13, 1.0),                           # user 3 is not evaluated: ignored
        ("a", 1, 2, 1, 20, 1.0),
    ], RANK_SCHEMA)
    pairs = spark.createDataFrame([(1, 1), (2, 1), (1, 2)], "user_idx int, category_idx int")
    out = coverage_and_popularity(rankings, pairs, catalogue, [1, 2]).toPandas()
    get = {(r.system, None if pd.isna(r.category_idx) else int(r.category_idx), r.metric,
            None if pd.isna(r.k) else int(r.k)): (r.value, r.groups) for r in out.itertuples()}
    assert get[("a", 1, C.COVERAGE, 2)] == (pytest.approx(3 / 4), 2)     # items 10, 11, 12 of 4
    assert get[("a", 1, C.COVERAGE, 1)] == (pytest.approx(1 / 4), 2)
    assert get[("a", None, C.COVERAGE, 2)] == (pytest.approx(4 / 6), 3)
    want_pop = (math.log(4) + math.log(2) + math.log(4) + 0) / 4
    assert get[("a", 1, C.POPULARITY_BIAS, 2)][0] == pytest.approx(want_pop)
    assert get[("catalogue", 2, C.CATALOGUE_POPULARITY, None)] == (pytest.approx(math.log(8) / 2), 2)


def _group_frame(values_by_system):
    rows = []
    for system, per_cat in values_by_system.items():
        for category, vals in per_cat.items():
            for user, v in enumerate(vals, start=1):
                rows.append((system, user, category, "warm", "ndcg", 10, v))
    return pd.DataFrame(rows, columns=[C.SYSTEM, C.USER, C.CATEGORY, C.SLICE, C.METRIC, C.K, C.VALUE])


def test_summarize_means_counts_and_deterministic_intervals():
    frame = _group_frame({"a": {1: [1.0, 0.0, 0.0, 1.0], 2: [0.0, 0.0]},
                          "b": {1: [0.5, 0.5, 0.5, 0.5], 2: [1.0, 1.0]}})
    out = summarize(frame, samples=500, seed=5)
    get = out.set_index([C.SYSTEM, C.CATEGORY_NAME])
    assert get.loc[("a", "1"), C.VALUE] == pytest.approx(0.5)
    assert get.loc[("a", "all"), C.VALUE] == pytest.approx(2 / 6)          # micro over 6 groups
    assert get.loc[("a", "macro"), C.VALUE] == pytest.approx(0.25)         # mean of 0.5 and 0.0
    assert get.loc[("a", "all"), C.GROUPS] == 6
    assert get.loc[("b", "2"), C.CI_LOW] == get.loc[("b", "2"), C.CI_HIGH] == 1.0  # constant values
    low, high = get.loc[("a", "1"), C.CI_LOW], get.loc[("a", "1"), C.CI_HIGH]
    assert 0.0 <= low < 0.5 < high <= 1.0
    # Same seed, shuffled input: identical intervals (seeded per slice and category, not by order).
    again = summarize(frame.sample(frac=1.0, random_state=1), samples=500, seed=5)
    pd.testing.assert_frame_equal(out.sort_values([C.SYSTEM, C.CATEGORY_NAME]).reset_index(drop=True),
                                  again.sort_values([C.SYSTEM, C.CATEGORY_NAME]).reset_index(drop=True))
    assert summarize(frame, samples=0, seed=5)[C.CI_LOW].isna().all()


def test_summarize_refuses_systems_on_different_groups():
    frame = _group_frame({"a": {1: [1.0, 0.0]}, "b": {1: [1.0]}})
    with pytest.raises(ValueError, match="do not cover the same groups"):
        summarize(frame, samples=10, seed=1)
