"""Popularity as vectors: the served fallback and the evaluated baseline are one ranking.

An item's vector is ``[train_count]`` and every user's is ``[1.0]``, so :func:`rank_by_vectors`
orders a category's items by train positives, most first, ties (equal counts) by lower item_idx.

The rule for items without train positives (``train_count`` 0, e.g. items that appeared after the
train cutoff): **they are kept**, ranked after every item with train positives, by item_idx. The
evaluation ranks every item of the category for every system, so its popularity baseline must;
candidate generation uses the same lists, so the fallback a user is served is the baseline that is
measured. In practice a pair reaches those items only when its category has fewer than K unseen
items with train positives; it then gets K items instead of a short list.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xrec_spark.checks import check_columns
from xrec_spark.names import CATEGORY, ITEM, USER, VECTOR
from xrec_spark.ranking.spark import rank_by_vectors

TRAIN_COUNT = "train_count"   # silver.item_features: train positives of the item


def popularity_vectors(item_features: DataFrame) -> DataFrame:
    """item_idx, category_idx, vector = [train_count] for every item of ``item_features``
    (silver.item_features: item_idx, category_idx, train_count), cold items included ([0])."""
    check_columns(item_features, "item features", ints=(ITEM, CATEGORY, TRAIN_COUNT))
    return item_features.select(ITEM, CATEGORY, F.array(F.col(TRAIN_COUNT).cast("float")).alias(VECTOR))


def constant_user_vectors(pairs: DataFrame) -> DataFrame:
    """user_idx, category_idx, vector = [1.0] for every distinct (user, category) of ``pairs``:
    the score of an item is then its popularity."""
    check_columns(pairs, "popularity pairs", ints=(USER, CATEGORY))
    return pairs.select(USER, CATEGORY).distinct().withColumn(VECTOR, F.array(F.lit(1.0).cast("float")))


def rank_by_popularity(pairs: DataFrame, item_features: DataFrame, k: int, exclude: DataFrame | None = None,
                       block_size: int = 4096) -> DataFrame:
    """Top ``k`` train-popular items of the category for each (user_idx, category_idx) of ``pairs``.

    Returns the columns of :func:`rank_by_vectors` with score = train_count; ``exclude``:
    user_idx, item_idx never to return, or None. Exact search (one dimension: nothing to gain
    from an index).
    """
    return rank_by_vectors(constant_user_vectors(pairs), popularity_vectors(item_features), k, exclude,
                           block_size=block_size)
