"""Recent-item histories for the model's history encoder.

A history is an ``array<int>`` of exactly ``length`` item ids, most recent first, 0-padded at
the end, built only from **train positives**. Items with the same timestamp are ordered by
``item_idx`` descending (any fixed order would do; this one is shared by both tables).

- ``silver.user_history``: each indexed user's last ``length`` train positives, as of the end of
  the train split (users without any: all zeros).
- training examples: for a positive at time t, the user's train positives **strictly before t**
  (same-time items are left out: with day-precision data they are not "before").
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from xrec_spark.features.common import TRAIN, pad_ids


def train_positives(interactions: DataFrame) -> DataFrame:
    """``user_idx, item_idx, category_idx, ts, weight`` of train rows with label 1."""
    return (interactions.where((F.col("split") == TRAIN) & (F.col("label") == 1))
            .select("user_idx", "item_idx", "category_idx", "ts", "weight"))


def _check_length(length: int) -> None:
    if length < 1:
        raise ValueError(f"features.history_length must be >= 1, got {length}")


def user_history(positives: DataFrame, users: DataFrame, length: int) -> DataFrame:
    """One history per user as of the end of train.

    Args:
        positives: ``user_idx, item_idx, ts`` train positives.
        users: ``user_idx`` of every user to emit (silver.user_index).
        length: history length.

    Returns:
        ``user_idx, history (array<int>, exactly length)``.
    """
    _check_length(length)
    recent = positives.groupBy("user_idx").agg(
        F.slice(F.sort_array(F.collect_list(F.struct("ts", "item_idx")), asc=False), 1, length).alias("recent"))
    items = F.transform("recent", lambda x: x["item_idx"])
    return (users.select("user_idx").join(recent, "user_idx", "left")
            .select("user_idx", pad_ids(items, length).alias("history")))


def positives_with_history(positives: DataFrame, length: int) -> DataFrame:
    """Each train positive with the user's train positives strictly before it.

    Rows are grouped by (user, timestamp) first; a sliding window over the previous ``length``
    groups then holds at least ``length`` earlier items (each group has one or more), so the
    work per row is bounded by ``length`` whatever the user's activity.

    Args:
        positives: ``user_idx, item_idx, category_idx, ts, weight`` (train positives).
        length: history length.

    Returns:
        ``user_idx, item_idx, category_idx, ts, weight, history``.
    """
    _check_length(length)
    # One shuffle by user serves both the (user, ts) grouping and the per-user window.
    groups = positives.repartition("user_idx").groupBy("user_idx", "ts").agg(
        F.collect_list(F.struct("item_idx", "category_idx", "weight")).alias("rows"),
        F.slice(F.sort_array(F.collect_list("item_idx"), asc=False), 1, length).alias("items"))
    frame = Window.partitionBy("user_idx").orderBy("ts").rowsBetween(-length, -1)
    # Sorted explicitly: collect_list over a frame does not promise frame order.
    previous = F.sort_array(F.collect_list(F.struct("ts", "items")).over(frame), asc=False)
    recent = F.slice(F.flatten(F.transform(F.col("previous"), lambda g: g["items"])), 1, length)
    return (groups.select("user_idx", "ts", "rows", previous.alias("previous"))  # the window runs once
            .select("user_idx", "ts", "rows", pad_ids(recent, length).alias("history"))
            .select("user_idx", "ts", "history", F.explode("rows").alias("row"))
            .select("user_idx", F.col("row.item_idx").alias("item_idx"),
                    F.col("row.category_idx").alias("category_idx"), "ts",
                    F.col("row.weight").alias("weight"), "history"))
