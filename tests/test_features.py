"""Features job on a hand-made bronze of 26 events, with hand-computed expectations.

The fixture (days are 2021-01-DD at 12:00 UTC; categories books/music/games; threshold 3):

    train (< 01-20)                      valid (01-20 .. 01-24)        test (>= 01-25)
    u1 b1 d01 5, b1 d05 2 (dup, latest)   u1 b3 d20 5  warm             u5 m1 d25 5  cold_user
    u1 b2 d03 4, m1 d03 5, g2 d14 4       u3 b1 d21 4  cross_category   u4 g2 d26 4  warm
    u2 b1 d04 4, b3 d06 5, g1 d06 4       u5 b2 d22 5  cold_user        u1 m2 d27 2  warm (label 0)
    u2 m1 d13 1 (label 0)                 u2 m3 d23 4  cold_item        u3 g1 d28 5  cross_category
    u3 m1 d02 3, m2 d08 4, m2 d09 5 (dup) u4 b4 d24 3  cold_item        u6 b4 d29 5  cold_item
    u4 g1 d10 5, x1 d11 4 (category from items: games)                  u2 b2 d30 4  warm
    u4 z1 d12 5 (category unknown everywhere: dropped)

Catalogue (bronze.items): x1 games "Xeno"/"Acme", m3 music "Third song", b1 books "Book one"
(blank text), c1 books "Catalogue only"/"never rated" (no events, updated 2021-02-15).
"""

from __future__ import annotations

import math
from datetime import date, datetime, timezone

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conftest import make_config
from xrec_spark.config import NegativesConfig, NegativeStrategy
from xrec_spark.features.build import build_features
from xrec_spark.features.history import positives_with_history, train_positives
from xrec_spark.features.negatives import sample_negatives, sampling_pools
from xrec_spark.features.splits import Cutoffs, fraction_cutoffs
from xrec_spark.tables import (
    BRONZE_EVENTS, BRONZE_ITEMS, CATEGORY_INDEX, CATEGORY_TRANSFER, INTERACTIONS, ITEM_FEATURES, ITEM_INDEX,
    JOB_LOG, TRAINING_EXAMPLES, USER_CATEGORY_AFFINITY, USER_HISTORY, USER_INDEX, Lakehouse,
)

B, M, G = "books", "music", "games"
EVENTS = [  # user, item, day of January 2021, value, category (None: not recorded)
    ("u1", "b1", 1, 5.0, B), ("u1", "b2", 3, 4.0, B), ("u1", "m1", 3, 5.0, M), ("u1", "b1", 5, 2.0, B),
    ("u2", "b1", 4, 4.0, B), ("u2", "b3", 6, 5.0, B), ("u2", "g1", 6, 4.0, G),
    ("u3", "m1", 2, 3.0, M), ("u3", "m2", 8, 4.0, M), ("u3", "m2", 9, 5.0, M),
    ("u4", "g1", 10, 5.0, G), ("u4", "x1", 11, 4.0, None), ("u4", "z1", 12, 5.0, None),
    ("u2", "m1", 13, 1.0, M), ("u1", "g2", 14, 4.0, G),
    ("u1", "b3", 20, 5.0, B), ("u3", "b1", 21, 4.0, B), ("u5", "b2", 22, 5.0, B), ("u2", "m3", 23, 4.0, M),
    ("u4", "b4", 24, 3.0, B),
    ("u5", "m1", 25, 5.0, M), ("u4", "g2", 26, 4.0, G), ("u1", "m2", 27, 2.0, M), ("u3", "g1", 28, 5.0, G),
    ("u6", "b4", 29, 5.0, B), ("u2", "b2", 30, 4.0, B),
]
ITEMS = [  # item, category, title, text, brand, updated_at
    ("x1", G, "Xeno", None, "Acme", datetime(2021, 1, 1, tzinfo=timezone.utc)),
    ("m3", M, "Third song", None, None, datetime(2021, 1, 1, tzinfo=timezone.utc)),
    ("b1", B, "Book one", "  ", None, datetime(2021, 1, 1, tzinfo=timezone.utc)),
    ("c1", B, "Catalogue only", "never rated", None, datetime(2021, 2, 15, tzinfo=timezone.utc)),
]
# Dense ids by first-seen time then id (b3 and g1 both first seen on day 6).
USERS = {"u1": 1, "u3": 2, "u2": 3, "u4": 4, "u5": 5, "u6": 6}
ITEM_IDX = {"b1": 1, "m1": 2, "b2": 3, "b3": 4, "g1": 5, "m2": 6, "x1": 7, "g2": 8, "m3": 9, "b4": 10, "c1": 11}
CATS = {B: 1, M: 2, G: 3}

FEATURES = {
    "positive_min_value": 3.0, "recency_half_life_days": 10.0, "history_length": 3,
    "split": {"valid_start": "2021-01-20", "test_start": "2021-01-25"},
    "negatives": {"per_positive": 2, "strategies": ["uniform", "cross_category"], "hard_pool_size": 2,
                  "attempts": 50},
    "training_files": 2, "seed": 11,
}


def ts(day: int, month: int = 1) -> datetime:
    return datetime(2021, month, day, 12, tzinfo=timezone.utc)


def bronze_events(spark, rows, source: str = "test") -> DataFrame:
    """bronze.events rows from (user, item, day-or-datetime, value, category) tuples."""
    data = [(u, i, ts(d) if isinstance(d, int) else d, v, c) for u, i, d, v, c in rows]
    df = spark.createDataFrame(data, "user_id string, item_id string, event_ts timestamp, value double, category string")
    key = F.concat_ws("|", "user_id", "item_id", F.col("event_ts").cast("string"), F.col("value").cast("string"))
    return df.select(F.sha2(key, 256).alias("event_id"), "user_id", "item_id", F.lit("rating").alias("event_type"),
                     "event_ts", "value", "category", F.lit(source).alias("source"), F.lit("run").alias("ingest_run_id"),
                     F.current_timestamp().alias("ingested_at"))


def bronze_items(spark, rows) -> DataFrame:
    df = spark.createDataFrame(rows, "item_id string, category string, title string, text string, brand string, "
                                     "updated_at timestamp")
    return df.select("item_id", "category", "title", "text", "brand", F.lit(None).cast("double").alias("price"),
                     F.lit(None).cast(BRONZE_ITEMS.schema["image_vector"].dataType).alias("image_vector"), "updated_at", F.lit("test").alias("source"))


def assert_same_rows(actual: DataFrame, expected: DataFrame) -> None:
    """Equal as multisets: same rows, duplicates counted, order ignored."""
    cols = expected.columns
    a = actual.select(*cols)
    assert a.count() == expected.count()
    assert a.exceptAll(expected).count() == 0, a.exceptAll(expected).collect()
    assert expected.exceptAll(a).count() == 0, expected.exceptAll(a).collect()


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("features") / "lakehouse"
    cfg = make_config(root, features=FEATURES)
    lakehouse = Lakehouse(spark, str(root))
    lakehouse.merge(BRONZE_EVENTS, bronze_events(spark, EVENTS))
    lakehouse.merge(BRONZE_ITEMS, bronze_items(spark, ITEMS))
    summary = build_features(spark, lakehouse, cfg)
    return lakehouse, cfg, summary


def test_indexes_follow_first_seen_then_id(built):
    lakehouse, _, summary = built
    users = {r["user_id"]: r["user_idx"] for r in lakehouse.read(USER_INDEX).collect()}
    items = {r["item_id"]: r["item_idx"] for r in lakehouse.read(ITEM_INDEX).collect()}
    cats = {r["category"]: r["category_idx"] for r in lakehouse.read(CATEGORY_INDEX).collect()}
    assert (users, items, cats) == (USERS, ITEM_IDX, CATS)
    assert summary.new_ids == {"user_index": 6, "item_index": 11, "category_index": 3}
    assert summary.events_read == 26 and summary.unknown_category_events == 1


def test_interactions_dedupe_label_split_slice(spark, built):
    lakehouse, _, _ = built
    u, i, c = USERS, ITEM_IDX, CATS
    rows = [  # user, item, category, day, value, label, split, slice
        ("u1", "b1", B, 5, 2.0, 0, "train", None), ("u1", "b2", B, 3, 4.0, 1, "train", None),
        ("u1", "m1", M, 3, 5.0, 1, "train", None), ("u2", "b1", B, 4, 4.0, 1, "train", None),
        ("u2", "b3", B, 6, 5.0, 1, "train", None), ("u2", "g1", G, 6, 4.0, 1, "train", None),
        ("u3", "m1", M, 2, 3.0, 1, "train", None), ("u3", "m2", M, 9, 5.0, 1, "train", None),
        ("u4", "g1", G, 10, 5.0, 1, "train", None), ("u4", "x1", G, 11, 4.0, 1, "train", None),
        ("u2", "m1", M, 13, 1.0, 0, "train", None), ("u1", "g2", G, 14, 4.0, 1, "train", None),
        ("u1", "b3", B, 20, 5.0, 1, "valid", "warm"), ("u3", "b1", B, 21, 4.0, 1, "valid", "cross_category"),
        ("u5", "b2", B, 22, 5.0, 1, "valid", "cold_user"), ("u2", "m3", M, 23, 4.0, 1, "valid", "cold_item"),
        ("u4", "b4", B, 24, 3.0, 1, "valid", "cold_item"),
        ("u5", "m1", M, 25, 5.0, 1, "test", "cold_user"), ("u4", "g2", G, 26, 4.0, 1, "test", "warm"),
        ("u1", "m2", M, 27, 2.0, 0, "test", "warm"), ("u3", "g1", G, 28, 5.0, 1, "test", "cross_category"),
        ("u6", "b4", B, 29, 5.0, 1, "test", "cold_item"), ("u2", "b2", B, 30, 4.0, 1, "test", "warm"),
    ]
    expected = spark.createDataFrame(
        [(u[a], i[b], c[k], ts(d), v, lab, sp, sl) for a, b, k, d, v, lab, sp, sl in rows],
        "user_idx int, item_idx int, category_idx int, ts timestamp, value double, label int, split string, slice string")
    actual = lakehouse.read(INTERACTIONS)
    assert_same_rows(actual, expected)
    # Recency weight: half-life 10 days to the cutoff 01-20 00:00 (day 5 noon is 14.5 days before).
    weights = {(r["user_idx"], r["item_idx"]): r["weight"] for r in actual.collect()}
    assert weights[(u["u1"], i["b1"])] == pytest.approx(0.5 ** 1.45, rel=1e-6)
    assert weights[(u["u1"], i["g2"])] == pytest.approx(0.5 ** 0.55, rel=1e-6)
    assert weights[(u["u2"], i["b2"])] == 1.0  # after the cutoff


def test_affinity_and_transfer(spark, built):
    lakehouse, _, summary = built
    u, c = USERS, CATS

    def w(*days):  # sum of recency weights of train rows at these days (noon)
        return sum(0.5 ** ((19.5 - d) / 10) for d in days)

    rows = [  # user, category, n, weight, share, last day
        ("u1", B, 2, w(5, 3), 0.5, 5), ("u1", M, 1, w(3), 0.25, 3), ("u1", G, 1, w(14), 0.25, 14),
        ("u2", B, 2, w(4, 6), 0.5, 6), ("u2", G, 1, w(6), 0.25, 6), ("u2", M, 1, w(13), 0.25, 13),
        ("u3", M, 2, w(2, 9), 1.0, 9), ("u4", G, 2, w(10, 11), 1.0, 11),
    ]
    actual = {(r["user_idx"], r["category_idx"]): r for r in lakehouse.read(USER_CATEGORY_AFFINITY).collect()}
    assert set(actual) == {(u[a], c[k]) for a, k, *_ in rows}
    for a, k, n, weight, share, day in rows:
        row = actual[(u[a], c[k])]
        assert (row["n"], row["share"], row["last_ts"]) == (n, share, ts(day).replace(tzinfo=None))
        assert row["weight"] == pytest.approx(weight, rel=1e-6)

    # users per category: books {u1,u2}, music {u1,u2,u3}, games {u1,u2,u4}; 4 users in all.
    s6 = math.sqrt(6)
    expected = spark.createDataFrame([
        (c[B], c[M], 2, 1.0, 4 / 3, 2 / s6), (c[M], c[B], 2, 2 / 3, 4 / 3, 2 / s6),
        (c[B], c[G], 2, 1.0, 4 / 3, 2 / s6), (c[G], c[B], 2, 2 / 3, 4 / 3, 2 / s6),
        (c[M], c[G], 2, 2 / 3, 8 / 9, 2 / 3), (c[G], c[M], 2, 2 / 3, 8 / 9, 2 / 3),
    ], "src_category_idx int, dst_category_idx int, users_both long, p_dst_given_src double, lift double, score double")
    actual_t = lakehouse.read(CATEGORY_TRANSFER)
    rounded = [F.round(x, 9).alias(x) for x in ("p_dst_given_src", "lift", "score")]
    assert_same_rows(actual_t.select("src_category_idx", "dst_category_idx", "users_both", *rounded),
                     expected.select("src_category_idx", "dst_category_idx", "users_both", *rounded))
    top = summary.top_transfer[0]
    assert (top.src_category, top.dst_category, top.users_both) == (B, M, 2)  # score ties: lower ids first


def test_item_features_cover_every_indexed_item(spark, built):
    lakehouse, _, _ = built
    i, c = ITEM_IDX, CATS
    rows = [("b1", B, "Book one", 1), ("m1", M, None, 2), ("b2", B, None, 1), ("b3", B, None, 1),
            ("g1", G, None, 2), ("m2", M, None, 1), ("x1", G, "Xeno Acme", 1), ("g2", G, None, 1),
            ("m3", M, "Third song", 0), ("b4", B, None, 0), ("c1", B, "Catalogue only never rated", 0)]
    expected = spark.createDataFrame([(i[a], c[k], t, n) for a, k, t, n in rows],
                                     "item_idx int, category_idx int, text string, train_count long")
    actual = lakehouse.read(ITEM_FEATURES)
    assert_same_rows(actual, expected)
    assert actual.where(F.col("text_vector").isNotNull() | F.col("image_vector").isNotNull()).count() == 0


def test_histories_use_only_earlier_train_positives(spark, built):
    lakehouse, cfg, _ = built
    u, i = USERS, ITEM_IDX
    expected_users = spark.createDataFrame(
        [(u["u1"], [i["g2"], i["b2"], i["m1"]]), (u["u2"], [i["g1"], i["b3"], i["b1"]]),
         (u["u3"], [i["m2"], i["m1"], 0]), (u["u4"], [i["x1"], i["g1"], 0]), (u["u5"], [0, 0, 0]), (u["u6"], [0, 0, 0])],
        "user_idx int, history array<int>")
    assert_same_rows(lakehouse.read(USER_HISTORY), expected_users)

    # Same-day items are not "before": u1's b2 and m1 (day 3) do not see each other.
    per_positive = [
        ("u1", "b2", []), ("u1", "m1", []), ("u1", "g2", [i["b2"], i["m1"]]),
        ("u2", "b1", []), ("u2", "b3", [i["b1"]]), ("u2", "g1", [i["b1"]]),
        ("u3", "m1", []), ("u3", "m2", [i["m1"]]), ("u4", "g1", []), ("u4", "x1", [i["g1"]]),
    ]
    expected = spark.createDataFrame([(u[a], i[b], (h + [0, 0, 0])[:3]) for a, b, h in per_positive],
                                     "user_idx int, item_idx int, history array<int>")
    positives = train_positives(lakehouse.read(INTERACTIONS))
    assert_same_rows(positives_with_history(positives, cfg.features.history_length), expected)
    examples = lakehouse.read(TRAINING_EXAMPLES)
    assert_same_rows(examples.where("label = 1").select("user_idx", "item_idx", "history"), expected)


def test_negatives_follow_pools_and_never_hit_a_positive(built):
    lakehouse, cfg, summary = built
    u, i, c = USERS, ITEM_IDX, CATS
    interactions = lakehouse.read(INTERACTIONS)
    pools = sampling_pools(lakehouse.read(ITEM_FEATURES), cfg.features.negatives)
    negatives = sample_negatives(train_positives(interactions), pools,
                                 lakehouse.read(USER_CATEGORY_AFFINITY), cfg.features.negatives, cfg.features.seed)
    got: dict[tuple, tuple] = {}
    for r in negatives.collect():
        got[(r["user_idx"], r["pos_item_idx"], r["slot"])] = (r["item_idx"], r["category_idx"])
    cat_of = {i[k]: c[v] for k, v in {"b1": B, "b2": B, "b3": B, "m1": M, "m2": M, "g1": G, "x1": G, "g2": G}.items()}
    # Slot 0 = uniform over the positive's category, slot 1 = hard negative from the top-2
    # (books: b1, b2; music: m1, m2; games: g1, x1) of another category the user is active in.
    allowed = {
        ("u1", "b2"): ({"b1", "b3"}, {"m2", "g1", "x1"}),
        ("u1", "m1"): ({"m2"}, {"b1", "g1", "x1"}),
        ("u1", "g2"): ({"g1", "x1"}, {"b1", "m2"}),
        ("u2", "b1"): ({"b2"}, {"x1", "m1", "m2"}),   # u2's m1 is a label-0 row: a valid negative
        ("u2", "b3"): ({"b2"}, {"x1", "m1", "m2"}),
        ("u2", "g1"): ({"x1", "g2"}, {"b2", "m1", "m2"}),
        ("u3", "m1"): (set(), set()),                 # music pool = u3's own positives; no other category
        ("u3", "m2"): (set(), set()),
        ("u4", "g1"): ({"g2"}, set()),                # only games: its top-2 are u4's positives
        ("u4", "x1"): ({"g2"}, set()),
    }
    expected_keys = set()
    for (user, pos), pools in allowed.items():
        for slot, pool in enumerate(pools):
            key = (u[user], i[pos], slot)
            if pool:
                expected_keys.add(key)
                item, cat = got[key]
                assert item in {i[x] for x in pool}, (user, pos, slot, item)
                assert cat == cat_of[item]
    assert set(got) == expected_keys
    assert summary.empty_negative_slots == 6
    assert summary.train_positives == 10
    examples = lakehouse.read(TRAINING_EXAMPLES)
    assert examples.count() == 10 + 14
    assert len(lakehouse.files(TRAINING_EXAMPLES)) == 2
    # The written negatives are the sampled ones (with their positive's history).
    assert_same_rows(examples.where("label = 0").select("user_idx", "item_idx", "category_idx"),
                     negatives.select("user_idx", "item_idx", "category_idx"))


def test_rerun_on_unchanged_bronze_is_skipped(spark, built):
    lakehouse, cfg, first = built
    before = lakehouse.versions([USER_INDEX, INTERACTIONS, TRAINING_EXAMPLES])
    again = build_features(spark, lakehouse, cfg)
    assert again.skipped and again.run_id == first.run_id
    assert again.row_counts == first.row_counts
    assert lakehouse.versions([USER_INDEX, INTERACTIONS, TRAINING_EXAMPLES]) == before
    log = lakehouse.read(JOB_LOG).where("job = 'features'").collect()
    assert len(log) == 1
    assert dict(log[0]["input_versions"]) == {"bronze.events": 1, "bronze.items": 1}
    assert dict(log[0]["output_versions"]) == first.output_versions


def test_fraction_cutoffs_keep_days_whole(spark):
    # 10 rows on days 1..10 of 2021-03, plus 2 more on day 9: cumulative 1..8, 11, 12 of 12.
    days = list(range(1, 11)) + [9, 9]
    df = spark.createDataFrame([(ts(d, 3),) for d in days], "ts timestamp")
    row = fraction_cutoffs(df, valid_fraction=0.25, test_fraction=0.1).first()
    cut = Cutoffs.from_row(row)
    # train share must stay <= 0.65: 7 of 12 rows (days 1-7, 0.58); day 8 would make 0.67.
    # test: share before must stay <= 0.9: days 1-9 hold 11/12 = 0.92 > 0.9, so test starts on day 9.
    assert (cut.valid_start, cut.test_start) == (date(2021, 3, 8), date(2021, 3, 9))
    no_test = Cutoffs.from_row(fraction_cutoffs(df, valid_fraction=0.5, test_fraction=0.0).first())
    assert no_test.test_start == date(2021, 3, 11)  # after the last day: no test rows
    # 0.7 * 10 is a whole number of rows: exactly 7 train rows, not 6.
    even = spark.createDataFrame([(ts(d, 3),) for d in range(1, 11)], "ts timestamp")
    assert Cutoffs.from_row(fraction_cutoffs(even, 0.2, 0.1).first()).valid_start == date(2021, 3, 8)


def test_popularity_draws_follow_count_power_alpha(spark):
    # One category, items 1 (count 1) and 2 (count 9), alpha 1: P(2) = 0.9. Item 3 is the
    # positive of every user; 2000 positives, one popularity slot each.
    items = spark.createDataFrame([(1, 1, 1), (2, 1, 9), (3, 1, 0)], "item_idx int, category_idx int, train_count long")
    positives = spark.range(2000).select(F.col("id").cast("int").alias("user_idx"), F.lit(3).alias("item_idx"),
                                         F.lit(1).alias("category_idx"), F.lit(ts(1)).alias("ts"),
                                         F.lit(1.0).cast("float").alias("weight"))
    cfg = NegativesConfig(per_positive=1, strategies=["popularity"], popularity_alpha=1.0, attempts=1)
    pools = sampling_pools(items, cfg)
    assert pools[NegativeStrategy.POPULARITY].probabilities(1) == pytest.approx({1: 0.1, 2: 0.9})
    assert pools[NegativeStrategy.POPULARITY].probabilities(2) == {}  # no such category: nothing to draw
    drawn = sample_negatives(positives, pools, positives.limit(0), cfg, seed=3)
    counts = {r["item_idx"]: r["count"] for r in drawn.groupBy("item_idx").count().collect()}
    assert sum(counts.values()) == 2000
    assert abs(counts[2] / 2000 - 0.9) < 0.03  # 4.5 binomial standard deviations
    again = sample_negatives(positives, pools, positives.limit(0), cfg, seed=3)
    assert_same_rows(again, drawn)  # deterministic for a seed


def test_sampling_pools_need_a_strategy(spark):
    # The config refuses no strategies with per_positive > 0 when it loads (tests/test_config.py);
    # with per_positive 0 the pools are never built, and asking for them anyway fails.
    items = spark.createDataFrame([(1, 1, 1)], "item_idx int, category_idx int, train_count long")
    with pytest.raises(ValueError, match="features.negatives.strategies is empty"):
        sampling_pools(items, NegativesConfig(per_positive=0, strategies=[]))


# Events after the train cutoff (2021-01-20): a train pair seen again (u1 b1, u2 b3), a train item
# rated three times in another category (m2 music -> games), a new user and a new item.
LATER_EVENTS = [
    ("u1", "b1", 22, 5.0, B), ("u2", "b3", 27, 5.0, B),
    ("u5", "m2", 21, 5.0, G), ("u6", "m2", 26, 4.0, G), ("u4", "m2", 28, 5.0, G),
    ("u7", "b9", 23, 4.0, B), ("u7", "g1", 29, 5.0, G),
]


def test_no_look_ahead_events_after_the_cutoff_change_no_train_derived_table(spark, tmp_path):
    """Appending events after the valid cutoff and rebuilding leaves every train-derived table
    identical row for row; a train pair seen again later is never a valid/test row."""
    lakehouse = Lakehouse(spark, str(tmp_path / "lakehouse"))
    cfg = make_config(tmp_path / "lakehouse", features=FEATURES)
    lakehouse.merge(BRONZE_EVENTS, bronze_events(spark, EVENTS))
    lakehouse.merge(BRONZE_ITEMS, bronze_items(spark, ITEMS))
    build_features(spark, lakehouse, cfg)

    def train_derived() -> dict[str, DataFrame]:
        old_users = F.col("user_idx") <= len(USERS)
        old_items = F.col("item_idx") <= len(ITEM_IDX)
        return {
            "interactions": lakehouse.read(INTERACTIONS).where(F.col("split") == "train"),
            "affinity": lakehouse.read(USER_CATEGORY_AFFINITY),
            "transfer": lakehouse.read(CATEGORY_TRANSFER),
            "item_features": lakehouse.read(ITEM_FEATURES).where(old_items & (F.col("train_count") > 0)),
            "train_counts": lakehouse.read(ITEM_FEATURES).where(old_items).select("item_idx", "train_count"),
            "user_history": lakehouse.read(USER_HISTORY).where(old_users),
            "training_examples": lakehouse.read(TRAINING_EXAMPLES),
            "indexes": lakehouse.read(ITEM_INDEX).where(old_items),
        }

    before = {name: df.localCheckpoint() for name, df in train_derived().items()}
    lakehouse.merge(BRONZE_EVENTS, bronze_events(spark, LATER_EVENTS, source="later"))
    summary = build_features(spark, lakehouse, cfg)
    assert not summary.skipped and summary.new_ids["user_index"] == 1 and summary.new_ids["item_index"] == 1
    after = train_derived()
    for name, expected in before.items():
        assert expected.count() > 0, name
        assert_same_rows(after[name], expected)
    later = {(r["user_idx"], r["item_idx"]): r["split"]
             for r in lakehouse.read(INTERACTIONS).where(F.col("split") != "train").collect()}
    assert (USERS["u1"], ITEM_IDX["b1"]) not in later and (USERS["u2"], ITEM_IDX["b3"]) not in later
    assert later[(USERS["u5"], ITEM_IDX["m2"])] == "valid"
    m2 = lakehouse.read(ITEM_FEATURES).where(F.col("item_idx") == ITEM_IDX["m2"]).first()
    assert m2["category_idx"] == CATS[M]  # its train category, not the games of its later ratings
