"""The per-user pass behind histories and negatives: batching, histories, pools, draws."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from xrec_spark.config import FeaturesConfig
from xrec_spark.features.common import uniform01
from xrec_spark.features.history import earlier_items
from xrec_spark.features.negatives import Pool, group_weights, sampling_pools, training_examples
from xrec_spark.features.per_user import complete_users


def _batches(users: list[int], size: int) -> list[pa.RecordBatch]:
    table = pa.table({"user_idx": pa.array(users, pa.int32()), "row": pa.array(range(len(users)), pa.int32())})
    return table.to_batches(max_chunksize=size)


def test_complete_users_never_splits_a_user():
    users = [1, 1, 2, 3, 3, 3, 3, 3, 4, 5, 5]
    for size in (1, 2, 3, 4, 100):
        tables = list(complete_users(iter(_batches(users, size))))
        seen = [t.column("user_idx").to_pylist() for t in tables]
        assert sum(seen, []) == users  # every row once, in order
        owners = [set(s) for s in seen]
        for a in range(len(owners)):
            for b in range(a + 1, len(owners)):
                assert not owners[a] & owners[b], (size, seen)


def test_earlier_items_by_hand():
    # user 1: t1 {10}, t2 {11, 12}, t3 {13}; user 2: t1 {20}, t5 {21}
    user = np.array([1, 1, 1, 1, 2, 2])
    ts = np.array([1, 2, 2, 3, 1, 5])
    item = np.array([10, 11, 12, 13, 20, 21])
    got = earlier_items(user, ts, item, 3)
    assert got.tolist() == [
        [0, 0, 0],          # nothing before t1
        [10, 0, 0],         # same-time 11/12 do not see each other
        [10, 0, 0],
        [12, 11, 10],       # latest first; same time by item descending
        [0, 0, 0],          # user 2 does not see user 1
        [20, 0, 0],
    ]


def test_profile_items_by_hand():
    """history_as_of=profile: the user's latest items at the end of train, minus the row's own."""
    import pyarrow as pa

    from xrec_spark.features.history import histories, profile_items

    # user 1: items 10..13 in time order; user 2: 20, 21; user 3: one item
    user = np.array([1, 1, 1, 1, 2, 2, 3])
    item = np.array([10, 11, 12, 13, 20, 21, 30])
    assert profile_items(user, item, 3).tolist() == [
        [13, 12, 11],       # the latest three: the row's item (10) is not among them
        [13, 12, 10],       # 11 left out, so the walk reaches 10
        [13, 11, 10],
        [12, 11, 10],
        [21, 0, 0],         # user 2 never sees user 1's items
        [20, 0, 0],
        [0, 0, 0],          # a user's only item: nothing else to complete it from
    ]
    users = pa.table({"user_idx": user, "item_idx": item, "ts_us": np.arange(7)})
    assert histories(users, 3, "profile").tolist() == profile_items(user, item, 3).tolist()


def test_pool_draws_by_hand():
    # category 0: items 5 (w 1), 6 (w 3); category 2: item 9 (w 2); category 1 has no items.
    pool = Pool.build(np.array([6, 9, 5]), np.array([0, 2, 0]), np.array([3.0, 2.0, 1.0]))
    assert pool.probabilities(0) == pytest.approx({5: 0.25, 6: 0.75})
    x = np.array([0.0, 0.2499, 0.25, 0.9999999999999999, 0.5, 0.5, 0.5])
    category = np.array([0, 0, 0, 0, 1, 2, 7])
    assert pool.draw(category, x).tolist() == [5, 5, 6, 6, -1, 9, -1]
    # x close to 1 rounds category + x up to the next category: still an item of the category
    assert pool.draw(np.array([2]), np.array([1 - 2**-53])).tolist() == [9]


def test_group_weights_by_hand():
    # user 1: 4 positives in category 0, 1 in category 2; user 2: 1 in category 0 (another batch's
    # user 1 rows would be this batch's too: the per-user pass never splits a user).
    users = pa.table({"user_idx": [1, 1, 1, 1, 1, 2], "category_idx": [0, 0, 2, 0, 0, 0],
                      "weight": pa.array([1.0, 0.5, 1.0, 1.0, 1.0, 0.25], pa.float32())})
    assert group_weights(users, 0.0).tolist() == [1.0, 0.5, 1.0, 1.0, 1.0, 0.25]
    # power 1: each (user, category) group's weights sum to its recency-weighted mean
    assert group_weights(users, 1.0).tolist() == pytest.approx([0.25, 0.125, 1.0, 0.25, 0.25, 0.25])
    # power 0.5: n = 4 -> 1/2
    assert group_weights(users, 0.5).tolist() == pytest.approx([0.5, 0.25, 1.0, 0.5, 0.5, 0.25])


def test_uniform01_is_a_function_of_the_key():
    a = uniform01(7, "item", np.arange(1000)[:, None], np.arange(3)[None, :])
    b = uniform01(7, "item", np.arange(500, 1000)[:, None], np.arange(3)[None, :])
    assert np.array_equal(a[500:], b)
    assert 0.0 <= a.min() and a.max() < 1.0
    assert abs(a.mean() - 0.5) < 0.02
    assert not np.array_equal(a, uniform01(8, "item", np.arange(1000)[:, None], np.arange(3)[None, :]))
    assert not np.array_equal(a, uniform01(7, "category", np.arange(1000)[:, None], np.arange(3)[None, :]))


def test_training_examples_do_not_depend_on_batching(spark):
    # 40 users with 1..12 positives each in 3 categories: small Arrow batches split users.
    rows = [(u, 1000 + (u * 7 + k) % 60, (u + k) % 3, k // 2, 1.0) for u in range(40) for k in range(1 + u % 12)]
    positives = (spark.createDataFrame(rows, "user_idx int, item_idx int, category_idx int, day int, weight float")
                 .dropDuplicates(["user_idx", "item_idx"])
                 .withColumn("ts", F.timestamp_seconds(F.col("day") * 86400)).drop("day"))
    items = (positives.groupBy("item_idx").agg(F.min("category_idx").alias("category_idx"),
                                               F.count(F.lit(1)).alias("train_count")))
    cfg = FeaturesConfig(history_length=4, training_files=2,
                         negatives={"per_positive": 3, "strategies": ["uniform", "popularity", "cross_category"],
                                    "hard_pool_size": 5})
    affinity = positives.select("user_idx", "category_idx").distinct()
    pools = sampling_pools(items, cfg.negatives)

    def build(batch: int) -> list[tuple]:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch))
        try:
            out = training_examples(positives, pools, affinity, cfg).collect()
        finally:
            spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
        return sorted(tuple(r["history"]) + (r["user_idx"], r["item_idx"], r["category_idx"], r["label"]) for r in out)

    small, large = build(3), build(10_000)
    assert small == large
    n_pos = positives.count()
    assert sum(1 for r in large if r[-1] == 1.0) == n_pos
    taken = {(r["user_idx"], r["item_idx"]) for r in positives.collect()}
    negatives = [r for r in large if r[-1] == 0.0]
    assert negatives and not any((r[-4], r[-3]) in taken for r in negatives)

    # group_weight_power 1: each (user, category)'s positives weigh 1 in all, whatever its size
    weighted = training_examples(positives, pools, affinity, cfg.model_copy(update={"group_weight_power": 1.0}))
    sums = (weighted.where("label = 1").groupBy("user_idx", "category_idx").agg(F.sum("weight").alias("w"))
            .agg(F.min("w"), F.max("w")).first())
    assert sums[0] == pytest.approx(1.0, rel=1e-5) and sums[1] == pytest.approx(1.0, rel=1e-5)


def test_day_histories_leave_out_the_same_day():
    """history_as_of=day: a row's history holds the user's items of earlier UTC days only."""
    import pyarrow as pa

    from xrec_spark.features.history import histories

    day, hour = 86_400 * 1_000_000, 3_600 * 1_000_000
    users = pa.table({"user_idx": [1, 1, 1, 1, 2], "item_idx": [10, 11, 12, 13, 20],
                      "ts_us": [0, hour, day + hour, day + 2 * hour, 5 * hour]})
    by_event = histories(users, 3).tolist()
    by_day = histories(users, 3, "day").tolist()
    assert by_event == [[0, 0, 0], [10, 0, 0], [11, 10, 0], [12, 11, 10], [0, 0, 0]]
    assert by_day == [[0, 0, 0], [0, 0, 0], [11, 10, 0], [11, 10, 0], [0, 0, 0]]
