"""``silver.item_features``: one row per indexed item, cold ones included.

An item's **primary category** (its ``category_idx`` here, and the pool it is sampled from as a
negative) is its ``bronze.items`` category when set, else the category most of its (user, item)
interactions were recorded under (ties: the most recent, then the smallest name; the rule
ingest uses when it derives ``bronze.items`` from events) -- counting its **train** interactions
only when it has any, so that, like ``train_count``, it does not depend on later events. Only
an item first seen after the train cutoff (a cold item) takes it from its later interactions. Rows of
``silver.interactions`` keep the category of their own event, which can differ for the few
items a source lists under several categories.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.names import TRAIN


def _clean(col: str) -> F.Column:
    return F.when(F.trim(F.col(col)) != "", F.col(col))


def item_categories(pairs: DataFrame, items: DataFrame) -> DataFrame:
    """Primary category of every item known with a category.

    Args:
        pairs: deduplicated pairs ``item_id, category, ts, split`` (known categories).
        items: bronze.items ``item_id, category``.

    Returns:
        ``item_id, category`` (one row per item).
    """
    catalogue = (items.select("item_id", _clean("category").alias("catalogue_category"))
                 .where(F.col("catalogue_category").isNotNull()))
    train = F.col("split") == TRAIN
    counts = (pairs.groupBy("item_id", "category")
              .agg(F.count(F.when(train, 1)).alias("n_train"), F.max(F.when(train, F.col("ts"))).alias("train_ts"),
                   F.count(F.lit(1)).alias("n"), F.max("ts").alias("last_ts")))
    # Train counts decide first; the all-time counts only order the categories of a cold item
    # (n_train = 0 everywhere), as the name comes before them for an item with train rows.
    has_train = F.max("n_train").over(Window.partitionBy("item_id")) > 0
    best = Window.partitionBy("item_id").orderBy(
        F.desc("n_train"), F.desc_nulls_last("train_ts"), F.when(F.col("_has_train"), F.col("category")),
        F.desc("n"), F.desc("last_ts"), "category")
    mode = (counts.withColumn("_has_train", has_train).withColumn("rank", F.row_number().over(best)).where(F.col("rank") == 1)
            .select("item_id", F.col("category").alias("event_category")))
    return (catalogue.join(mode, "item_id", "full_outer")
            .select("item_id", F.coalesce("catalogue_category", "event_category").alias("category")))


def item_text(items: DataFrame) -> DataFrame:
    """``item_id, text, image_vector``: title + text + brand joined by spaces (null when all empty)."""
    joined = F.trim(F.concat_ws(" ", _clean("title"), _clean("text"), _clean("brand")))
    return items.select("item_id", F.when(joined != "", joined).alias("text"), "image_vector")


def item_features(item_index: DataFrame, category_index: DataFrame, categories: DataFrame,
                  content: DataFrame, interactions: DataFrame) -> DataFrame:
    """Assemble silver.item_features.

    Args:
        item_index: ``item_id, item_idx``.
        category_index: ``category, category_idx``.
        categories: ``item_id, category`` from :func:`item_categories`.
        content: ``item_id, text, image_vector`` from :func:`item_text`.
        interactions: silver.interactions ``item_idx, label, split``.

    Returns:
        ``item_idx, category_idx, text, image_vector, text_vector (null), train_count (long)``;
        items of the index without any known category are absent (the job reports them).
    """
    train_count = (interactions.where((F.col("split") == TRAIN) & (F.col("label") == 1))
                   .groupBy("item_idx").agg(F.count(F.lit(1)).alias("train_count")))
    return (item_index.join(categories, "item_id")
            .join(F.broadcast(category_index), "category")
            .join(content, "item_id", "left")
            .join(train_count, "item_idx", "left")
            .select("item_idx", "category_idx", "text", "image_vector",
                    F.lit(None).cast(T.ArrayType(T.FloatType(), containsNull=False)).alias("text_vector"),
                    F.coalesce(F.col("train_count"), F.lit(0)).cast("long").alias("train_count")))
