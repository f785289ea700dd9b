"""Candidate search: kernels (numpy/faiss), the Spark engine (xrec_spark.ranking), fallback, and the candidates job."""

from datetime import date

import numpy as np
import pytest
from pyspark.sql import functions as F

from batch_fixtures import (
    BATCH, EXPECTED, FEATURES, ITEM_CATEGORY, SEEN, WANTED_PAIRS, assert_same_rows, write_hand_embeddings,
    write_silver,
)
from conftest import make_config
from xrec_spark.batch.generate import generate_candidates
from xrec_spark.batch.pairs import category_ids, user_category_pairs
from xrec_spark.ranking import kernels
from xrec_spark.ranking.popularity import rank_by_popularity
from xrec_spark.ranking.spark import rank_by_vectors, search_recall
from xrec_spark.tables import CANDIDATES, CATEGORY_INDEX, JOB_LOG, USER_CATEGORY_AFFINITY, USER_INDEX, Lakehouse

CAND_SCHEMA = "user_idx int, category_idx int, rank int, item_idx int, score double"

# ------------------------------------------------------------------------------ kernels (no Spark)


def test_kernel_orders_by_score_then_item_and_drops_excluded():
    # items 10, 20, 30, 40 in 2-d; query [1, 0] scores 3, 1, 3, -1: tie 10/30 -> 10 first.
    cat = kernels.build_catalogue(1, np.array([30, 10, 40, 20]), np.array([[3, 0], [3, 0], [-1, 0], [1, 0]]))
    row, rank, item, score = kernels.top_k(cat, np.array([[1.0, 0.0], [1.0, 0.0]]), 3,
                                           exclude=[None, np.array([10, 99])])
    assert row.tolist() == [0, 0, 0, 1, 1, 1]
    assert rank.tolist() == [1, 2, 3, 1, 2, 3]
    assert item.tolist() == [10, 30, 20, 30, 20, 40]
    assert score.tolist() == [3.0, 3.0, 1.0, 3.0, 1.0, -1.0]


def test_kernel_returns_fewer_rows_when_the_category_runs_out():
    cat = kernels.build_catalogue(1, np.array([1, 2]), np.array([[1.0], [2.0]]))
    row, rank, item, _ = kernels.top_k(cat, np.array([[1.0], [1.0]]), 5, exclude=[np.array([2]), np.array([1, 2])])
    assert list(zip(row.tolist(), rank.tolist(), item.tolist())) == [(0, 1, 1)]


def test_kernel_exact_matches_brute_force_across_blocks():
    rng = np.random.default_rng(3)
    ids = rng.permutation(np.arange(1, 401))
    items = rng.standard_normal((400, 8)).astype(np.float32)
    users = rng.standard_normal((50, 8)).astype(np.float32)
    exclude = [rng.choice(ids, size=int(rng.integers(0, 30)), replace=False) for _ in range(50)]
    row, _, item, _ = kernels.top_k(kernels.build_catalogue(1, ids, items), users, 10, exclude, block_size=7)
    scores = users @ items.T
    for r in range(50):
        s = np.where(np.isin(ids, exclude[r]), -np.inf, scores[r])
        assert item[row == r].tolist() == ids[np.argsort(-s, kind="stable")[:10]].tolist()


def test_faiss_catalogue_keeps_high_recall_on_clustered_vectors():
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((20, 16)) * 3
    items = (centres[rng.integers(0, 20, 4000)] + rng.standard_normal((4000, 16))).astype(np.float32)
    users = (centres[rng.integers(0, 20, 200)] + rng.standard_normal((200, 16))).astype(np.float32)
    ids = np.arange(1, 4001)
    exact = kernels.build_catalogue(1, ids, items)
    approx = kernels.build_catalogue(1, ids, items, approximate=True, nlist=64, nprobe=16)
    assert approx.index is not None and approx.nprobe == 16
    r_e, _, i_e, _ = kernels.top_k(exact, users, 20)
    r_a, _, i_a, _ = kernels.top_k(approx, users, 20, index=kernels.load_index(approx))
    value = kernels.recall([i_a[r_a == r] for r in range(200)], [i_e[r_e == r] for r in range(200)])
    assert 0.9 <= value <= 1.0


@pytest.mark.parametrize("n_items, nlist, lists", [(100, 256, 0), (39 * 4, 256, 4), (100_000, 256, 256)])
def test_ivf_lists_capped_by_catalogue_size(n_items, nlist, lists):
    assert kernels.ivf_lists(n_items, nlist) == lists


def test_recall_counts_overlap_per_row():
    assert kernels.recall([np.array([1, 2]), np.array([5, 6])], [np.array([1, 3]), np.array([5, 6])]) == 0.75


# ------------------------------------------------------------------------------ Spark engine


def _frames(spark):
    items = spark.createDataFrame([(i, ITEM_CATEGORY[i], v) for i, v in
                                   {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 1.0], 4: [2.0, 0.0], 5: [0.0, 3.0]}.items()
                                   if i <= 5], "item_idx int, category_idx int, vector array<float>")
    users = spark.createDataFrame([(10, 1, [1.0, 0.5]), (11, 1, [0.0, 1.0]), (10, 2, [1.0, 0.0]), (12, 3, [1.0, 1.0])],
                                  "user_idx int, category_idx int, vector array<float>")
    return users, items


def test_rank_by_vectors_hand_computed(spark):
    users, items = _frames(spark)
    exclude = spark.createDataFrame([(10, 3), (10, 5), (11, 4)], "user_idx int, item_idx int")
    got = rank_by_vectors(users, items, 2, exclude)
    # u10 c1 [1,.5]: 1 -> 1.0, 2 -> 0.5, 3 -> 1.5 (excluded); u11 c1 [0,1]: 2 -> 1, 3 -> 1 (tie), 1 -> 0;
    # u10 c2 [1,0]: 4 -> 2, 5 excluded; u12 asks for category 3, which has no items: no rows.
    expected = spark.createDataFrame([(10, 1, 1, 1, 1.0), (10, 1, 2, 2, 0.5), (11, 1, 1, 2, 1.0),
                                      (11, 1, 2, 3, 1.0), (10, 2, 1, 4, 2.0)], CAND_SCHEMA)
    assert_same_rows(got, expected)


def test_faiss_mode_equals_exact_on_a_tiny_catalogue_and_recall_is_one(spark):
    users, items = _frames(spark)
    exact = rank_by_vectors(users, items, 2)
    approx = rank_by_vectors(users, items, 2, search="faiss", faiss_nlist=4, faiss_nprobe=1)
    assert_same_rows(approx, exact)  # 5 items: too few for an index, searched exactly
    assert search_recall(approx, exact) == 1.0


def test_search_recall_hand_computed(spark):
    exact = spark.createDataFrame([(1, 1, 1, 5, 1.0), (1, 1, 2, 6, 0.5), (2, 1, 1, 5, 1.0), (2, 1, 2, 7, 0.2)],
                                  CAND_SCHEMA)
    approx = spark.createDataFrame([(1, 1, 1, 5, 1.0), (1, 1, 2, 8, 0.4), (2, 1, 1, 5, 1.0), (2, 1, 2, 7, 0.2)],
                                   CAND_SCHEMA)
    assert search_recall(approx, exact) == pytest.approx(0.75)


def test_popularity_fallback_skips_seen_items(spark):
    features = spark.createDataFrame([(1, 1, 5), (2, 1, 7), (3, 1, 0), (4, 2, 1), (6, 1, 5)],
                                     "item_idx int, category_idx int, train_count long")
    pairs = spark.createDataFrame([(10, 1), (11, 1), (11, 2)], "user_idx int, category_idx int")
    exclude = spark.createDataFrame([(10, 2)], "user_idx int, item_idx int")
    got = rank_by_popularity(pairs, features, 2, exclude)
    # category 1 by count: 2 (7), 1 and 6 (5, tie -> 1 first), then 3 (count 0: last, see test_ranking)
    expected = spark.createDataFrame([(10, 1, 1, 1, 5.0), (10, 1, 2, 6, 5.0), (11, 1, 1, 2, 7.0),
                                      (11, 1, 2, 1, 5.0), (11, 2, 1, 4, 1.0)], CAND_SCHEMA)
    assert_same_rows(got, expected)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"k": 0}, ValueError, "batch.top_k"),
    ({"k": "3"}, TypeError, "k must be an int"),
    ({"k": 2, "search": "hnsw"}, ValueError, "unknown search 'hnsw'"),
    ({"k": 2, "block_size": 0}, ValueError, "batch.users_per_block"),
])
def test_rank_by_vectors_rejects_bad_arguments(spark, kwargs, error, match):
    users, items = _frames(spark)
    with pytest.raises(error, match=match):
        rank_by_vectors(users, items, **kwargs)


def test_rank_by_vectors_names_missing_and_mistyped_columns(spark):
    users, items = _frames(spark)
    with pytest.raises(ValueError, match=r"user vectors: missing columns vector"):
        rank_by_vectors(users.drop("vector"), items, 2)
    with pytest.raises(TypeError, match=r"item vectors: wrong column types: vector \(string"):
        rank_by_vectors(users, items.withColumn("vector", F.lit("x")), 2)


# ------------------------------------------------------------------------------ pairs and the job


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """One lakehouse with the hand-made silver tables and embeddings of model m1 (tests below
    write candidates for dates of their own)."""
    root = tmp_path_factory.mktemp("batch_world")
    lake = Lakehouse(spark, str(root))
    write_silver(lake)
    write_hand_embeddings(lake, "m1")
    return lake, root


def _on(lake, day):
    return lake.read(CANDIDATES).where(F.col("run_date") == F.lit(day))


def test_user_category_pairs_top_n_plus_targets(world):
    lake, _ = world
    targets = category_ids(lake.read(CATEGORY_INDEX), ["games"])
    assert targets == [3]
    pairs = user_category_pairs(lake.read(USER_INDEX), lake.read(USER_CATEGORY_AFFINITY), 1, targets)
    assert {(r.user_idx, r.category_idx) for r in pairs.collect()} == WANTED_PAIRS
    assert pairs.count() == len(WANTED_PAIRS)
    with pytest.raises(ValueError, match=r"unknown categories \['toys'\]"):
        category_ids(lake.read(CATEGORY_INDEX), ["games", "toys"])


def test_generate_candidates_model_fallback_and_idempotent_rerun(world):
    lake, root = world
    cfg = make_config(root, batch=BATCH, features=FEATURES)
    day = date(2024, 5, 1)
    result = generate_candidates(lake, cfg, day, model_version="m1")
    spark = lake.spark
    expected = spark.createDataFrame(
        [(day, u, c, r, i, s, src, "m1" if src == "model" else None) for u, c, r, i, s, src in EXPECTED],
        CANDIDATES.schema)
    assert_same_rows(_on(lake, day), expected)
    assert (result.rows, result.model_pairs, result.fallback_pairs) == (len(EXPECTED), 8, 1)

    # No candidate is an item the user has already seen.
    seen = spark.createDataFrame(SEEN, "user_idx int, item_idx int")
    assert _on(lake, day).join(seen, ["user_idx", "item_idx"]).count() == 0

    # Re-running the date replaces its rows; another date adds its own.
    generate_candidates(lake, cfg, day, model_version="m1")
    assert _on(lake, day).count() == len(EXPECTED)
    generate_candidates(lake, cfg, date(2024, 5, 2), model_version="m1")
    assert _on(lake, date(2024, 5, 2)).count() == _on(lake, day).count() == len(EXPECTED)
    logged = lake.read(JOB_LOG).where(F.col("job") == "generate_candidates").select("run_key").collect()
    assert sorted(r.run_key for r in logged if r.run_key.startswith("2024-05-0")) == [
        "2024-05-01", "2024-05-01", "2024-05-02"]


def test_generate_candidates_without_exclusion_proposes_seen_items(world):
    lake, root = world
    cfg = make_config(root, batch={**BATCH, "exclude_seen": False}, features=FEATURES)
    day = date(2024, 6, 1)
    generate_candidates(lake, cfg, day, model_version="m1")
    top = {(r.user_idx, r.category_idx): r.item_idx for r in _on(lake, day).where("rank = 1").collect()}
    assert top[(1, 1)] == 3 and top[(3, 3)] == 9  # the seen best items come back


def test_generate_candidates_refuses_a_model_without_embeddings(world):
    lake, root = world
    cfg = make_config(root, batch=BATCH, features=FEATURES)
    with pytest.raises(RuntimeError, match="model m2 has no rows in gold.item_embeddings"):
        generate_candidates(lake, cfg, date(2024, 7, 1), model_version="m2")


def test_transfer_destinations_rank_untouched_categories_by_weighted_transfer(spark):
    from xrec_spark.batch.pairs import transfer_destinations

    # User 1: 75% in category 1, 25% in category 2. User 2: only category 3.
    affinity = spark.createDataFrame([(1, 1, 0.75), (1, 2, 0.25), (2, 3, 1.0)],
                                     "user_idx int, category_idx int, share double")
    transfer = spark.createDataFrame(
        [(1, 2, 0.9), (1, 3, 0.4), (1, 4, 0.2), (2, 1, 0.9), (2, 4, 0.8), (3, 1, 0.5), (3, 4, 0.5)],
        "src_category_idx int, dst_category_idx int, score double")
    got = {(r.user_idx, r.category_idx): round(r.transfer_score, 6)
           for r in transfer_destinations(affinity, transfer, 2).collect()}
    # User 1: 3 -> 0.75*0.4 = 0.3; 4 -> 0.75*0.2 + 0.25*0.8 = 0.35 (1 and 2 are touched).
    # User 2: 1 -> 0.5, 4 -> 0.5, tie broken by the smaller category_idx; both fit in 2.
    assert got == {(1, 4): 0.35, (1, 3): 0.3, (2, 1): 0.5, (2, 4): 0.5}
    one = {(r.user_idx, r.category_idx) for r in transfer_destinations(affinity, transfer, 1).collect()}
    assert one == {(1, 4), (2, 1)}


def test_served_categories_add_the_ones_nobody_has_train_activity_in(spark, tmp_path):
    from xrec_spark.batch.pairs import served_categories, unengaged_categories

    index = spark.createDataFrame([("books", 1), ("music", 2), ("games", 3), ("toys", 4)],
                                  "category string, category_idx int")
    affinity = spark.createDataFrame([(1, 1), (2, 1), (2, 3)], "user_idx int, category_idx int")
    assert unengaged_categories(index, affinity) == [2, 4]
    both = make_config(tmp_path, batch={"categories_for_all_users": ["games"]})
    assert served_categories(index, affinity, both) == [2, 3, 4]
    off = make_config(tmp_path, batch={"categories_for_all_users": ["games"], "serve_new_categories": False})
    assert served_categories(index, affinity, off) == [3]
