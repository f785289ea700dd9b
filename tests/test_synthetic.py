"""The synthetic generator: determinism, day slices, the planted structure, and ingest of its output."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import make_config
from xrec_spark.config import SyntheticConfig
from xrec_spark.ingest.run import run_ingest
from xrec_spark.ingest.synthetic import (synthetic_events, synthetic_ingest_config, synthetic_items,
                                         synthetic_users, write_synthetic)
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, Lakehouse

SMALL = SyntheticConfig(users=200, items=400, categories=4, events=8_000, taste_clusters=4, image_dim=3,
                        days=8, files=2, seed=11)


def _same(a, b) -> bool:
    """Equal as multisets of rows."""
    return a.count() == b.count() and a.exceptAll(b).count() == 0 and b.exceptAll(a).count() == 0


@pytest.fixture(scope="module")
def written(spark, tmp_path_factory):
    return write_synthetic(spark, SMALL, str(tmp_path_factory.mktemp("synthetic")))


def test_same_seed_same_rows_whatever_the_partitioning(spark, written):
    stored = spark.read.parquet(written.events)
    assert stored.count() == SMALL.events
    assert len([f for f in stored.inputFiles() if f.endswith(".parquet")]) == SMALL.files
    regenerated = synthetic_events(spark, SMALL.model_copy(update={"files": 3}))
    assert _same(stored, regenerated)
    assert _same(spark.read.parquet(written.items), synthetic_items(spark, SMALL))


def test_different_seed_different_rows(spark, written):
    stored = spark.read.parquet(written.events)
    other = synthetic_events(spark, SMALL.model_copy(update={"seed": 12}))
    assert other.count() == SMALL.events
    assert stored.exceptAll(other).count() > 0.9 * SMALL.events


def test_day_slices_partition_the_full_data(spark):
    cfg = SMALL.model_copy(update={"events": 1_001, "days": 4, "files": 1})
    days = [synthetic_events(spark, cfg, day=d) for d in range(cfg.days)]
    union = days[0].unionByName(days[1]).unionByName(days[2]).unionByName(days[3])
    assert _same(synthetic_events(spark, cfg), union)
    dates = {r["d"] for r in days[3].select(F.date_format("event_ts", "yyyy-MM-dd").alias("d")).distinct().collect()}
    assert dates == {"2020-01-04"}


def test_users_of_a_cluster_concentrate_on_its_items_in_every_category(spark, written):
    events = spark.read.parquet(written.events)
    items = spark.read.parquet(written.items).select("item_id", F.col("cluster").alias("item_cluster"))
    users = spark.read.parquet(written.users)
    share = {r["category"]: (r["share"], r["n"]) for r in (
        events.join(items, "item_id").join(users, "user_id")
        .groupBy("category").agg(F.avg((F.col("item_cluster") == F.col("cluster")).cast("double")).alias("share"),
                                 F.count(F.lit(1)).alias("n"))).collect()}
    assert set(share) == {"cat01", "cat02", "cat03", "cat04"}
    # expected 0.8 + 0.2 / 4 = 0.85 in every category; no structure would give 1 / 4
    assert all(0.8 < s < 0.9 and n > 500 for s, n in share.values()), share


def test_popularity_is_skewed(spark, written):
    counts = sorted((r["count"] for r in spark.read.parquet(written.events).groupBy("item_id").count().collect()),
                    reverse=True)
    top_tenth = sum(counts[: SMALL.items // 10])
    assert top_tenth > 0.3 * SMALL.events  # uniform popularity would give about 0.1


def test_text_and_vectors_carry_the_cluster(spark, written):
    items = spark.read.parquet(written.items).collect()
    assert len(items) == SMALL.items
    by_cluster = defaultdict(Counter)
    for r in items:
        by_cluster[r["cluster"]].update(set(f"{r['title']} {r['text']}".lower().split()))
    # a cluster's vocabulary: words in at least 20% of its items (category names aside)
    vocab = {c: {w for w, n in words.items() if n >= 0.2 * SMALL.items / SMALL.taste_clusters and not w.startswith("cat")}
             for c, words in by_cluster.items()}
    assert all(8 <= len(v) <= 12 for v in vocab.values()), {c: len(v) for c, v in vocab.items()}
    for a in vocab:
        for b in vocab:
            assert a == b or not vocab[a] & vocab[b]
    own = [len(set(f"{r['title']} {r['text']}".lower().split()) & vocab[r["cluster"]]) for r in items]
    assert min(own) >= 2 and np.mean(own) >= 3
    # nearest cluster centroid of an item's vector is its own cluster
    vectors = np.array([r["image_vector"] for r in items])
    clusters = np.array([r["cluster"] for r in items])
    assert vectors.shape == (SMALL.items, SMALL.image_dim)
    centroids = np.stack([vectors[clusters == c].mean(axis=0) for c in range(SMALL.taste_clusters)])
    nearest = np.argmin(((vectors[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == clusters).mean() > 0.9


def test_new_category_appears_on_its_day(spark):
    cfg = SMALL.model_copy(update={"new_category_day": 5, "new_category_items": 40, "new_category_users": 30,
                                   "image_dim": 0})
    before, on = synthetic_events(spark, cfg, day=4), synthetic_events(spark, cfg, day=5)
    assert before.where(F.col("category") == "cat05").count() == 0
    new = on.where(F.col("category") == "cat05")
    new_items = {r["item_id"] for r in new.select("item_id").distinct().collect()}
    assert 0.1 * on.count() < new.count() < 0.3 * on.count()
    assert new_items and all(400 <= int(i[1:]) < 440 for i in new_items)
    new_users = on.where(F.substring("user_id", 2, 10).cast("int") >= 200)
    assert new_users.count() > 0 and new_users.where(F.col("category") != "cat05").count() == 0
    assert synthetic_items(spark, cfg, day=4).count() == 400
    assert synthetic_items(spark, cfg, day=5).where(F.col("category") == "cat05").count() == 40
    assert synthetic_users(spark, cfg, day=5).where(F.col("first_day") == 5).count() == 30


def test_new_items_join_the_existing_categories_on_their_day(spark):
    cfg = SMALL.model_copy(update={"new_items_day": 5, "new_items": 40, "new_items_share": 0.25, "image_dim": 0})
    assert synthetic_events(spark, cfg, day=4).where(F.substring("item_id", 2, 10).cast("int") >= 400).count() == 0
    on = synthetic_events(spark, cfg, day=5)
    fresh = on.where(F.substring("item_id", 2, 10).cast("int") >= 400).toPandas()
    assert 0.15 * on.count() < len(fresh) < 0.3 * on.count()
    # New item 600 + m (after the 200 ids kept for a new category) has category m mod 4.
    m = fresh["item_id"].str[1:].astype(int) - 600
    assert m.between(0, 39).all() and (fresh["category"] == "cat" + (m % 4 + 1).map("{:02d}".format)).all()
    items = synthetic_items(spark, cfg, day=5)
    assert synthetic_items(spark, cfg, day=4).count() == 400 and items.count() == 440
    clusters = items.where(F.col("item_id") == "i613").first()["cluster"]
    assert clusters == (13 // 4) % 4


@pytest.mark.parametrize(("update", "day", "message"), [
    ({"items": 3}, None, r"synthetic\.items \(3\) must be >= synthetic\.categories \(4\)"),
    ({"new_category_day": 8}, None, r"synthetic\.new_category_day \(8\) must be < synthetic\.days \(8\)"),
    ({"new_items_day": 9}, None, r"synthetic\.new_items_day \(9\) must be < synthetic\.days \(8\)"),
    ({}, 8, r"day 8 is outside the generated period 0\.\.7"),
    ({"taste_clusters": 10_000}, None, r"synthetic\.taste_clusters \(10000\) is too large"),
])
def test_bad_settings_are_refused(spark, update, day, message):
    with pytest.raises(ValueError, match=message):
        synthetic_events(spark, SMALL.model_copy(update=update), day=day)


def test_synthetic_output_ingests_cleanly(spark, written, tmp_path):
    cfg = make_config(tmp_path / "lakehouse")
    cfg = cfg.model_copy(update={"ingest": synthetic_ingest_config(written, SMALL, cfg.ingest)})
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    summary = run_ingest(spark, lakehouse, cfg)
    # hashed timestamps can repeat a (user, item, second, rating): those are true duplicates
    duplicates = summary.quarantined.pop("duplicate within batch", 0)
    assert summary.quarantined == {}
    assert summary.accepted_events + duplicates == SMALL.events and duplicates < 5
    assert summary.accepted_items == SMALL.items
    row = lakehouse.read(BRONZE_ITEMS).where(F.col("item_id") == "i5").first()
    assert row["category"] == "cat02" and len(row["image_vector"]) == SMALL.image_dim and row["title"]
    assert lakehouse.read(BRONZE_EVENTS).select("category").distinct().count() == SMALL.categories


def test_synthetic_job(spark, tmp_path, capsys):
    from jobs import synthetic

    assert synthetic.main(["--out", str(tmp_path), "--day", "2", "--set", "synthetic.events=1000",
                           "--set", "synthetic.days=4", "--set", "synthetic.users=50",
                           "--set", "synthetic.items=100", "--set", "synthetic.files=1"]) == 0
    out = capsys.readouterr().out
    assert f"events: {tmp_path}/events-day-0002" in out and "ingest:" in out
    assert spark.read.parquet(str(tmp_path / "events-day-0002")).count() == 250
