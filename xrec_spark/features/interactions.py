"""From bronze events to one labelled, weighted row per (user, item).

Rules (the contract every later job reads):

- **Category of an event** = ``bronze.events.category`` when set (non-blank), else the item's
  category from ``bronze.items``. An event whose category is unknown in both is **dropped** and
  counted (``unknown_events``, reported in the job summary): a made-up "unknown" category would
  become a task head of unrelated items in the multi-task model and a fake row/column of the
  transfer matrix, and its items could not get the non-null ``category_idx`` that
  ``silver.item_features`` needs.
- **Dedup per (user, item)**: the **latest** event wins (ties on time: the larger value, then category),
  with its category, value and time: the latest rating is the user's current opinion, and the
  time of the row is when it was last engaged with. ``first_ts`` keeps the pair's first event
  time, which decides index order.
- **Label**: ``positive_min_value`` None -> every row is positive; else ``value >= threshold``
  is positive and a null value (an event type without a value, e.g. a click) is positive too:
  the threshold filters low explicit ratings, not implicit engagement.
- **Weight**: recency decay ``exp(-ln 2 * age_days / half_life)`` where ``age_days`` is the time
  from the row to the train cutoff (``valid_start``), floored at 0: a train row on the cutoff
  weighs 1, one half-life earlier 0.5; valid/test rows (after the cutoff) weigh 1.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from xrec_spark.features.common import SECONDS_PER_DAY, epoch_seconds


def _clean(col: str) -> F.Column:
    """A string column with blank values turned into null."""
    return F.when(F.trim(F.col(col)) != "", F.col(col))


def resolve_categories(events: DataFrame, items: DataFrame) -> DataFrame:
    """Give every event its category (event's own, else the item's; null = unknown).

    Args:
        events: bronze.events columns ``user_id, item_id, event_ts, value, category``.
        items: bronze.items columns ``item_id, category``.

    Returns:
        ``user_id, item_id, category (null when unknown), event_ts, value``.
    """
    item_category = (items.select("item_id", _clean("category").alias("item_category"))
                     .where(F.col("item_category").isNotNull()))
    return (events.join(item_category, "item_id", "left")
            .select("user_id", "item_id",
                    F.coalesce(_clean("category"), F.col("item_category")).alias("category"),
                    "event_ts", F.col("value").cast("double").alias("value")))


def latest_pairs(resolved: DataFrame) -> DataFrame:
    """One row per (user, item) from its latest event with a known category.

    Unknown-category events do not compete for "latest" but are counted per pair, so the
    caller can report them in the same pass over the events.

    Args:
        resolved: output of :func:`resolve_categories`.

    Returns:
        ``user_id, item_id, category, ts, value, first_ts, events, unknown_events`` (events:
        all events of the pair, unknown_events: those with unknown category); ``category``,
        ``ts``, ``value`` and ``first_ts`` are null for pairs whose events all have an unknown
        category (filter with ``category IS NOT NULL``).
    """
    known = F.col("category").isNotNull()
    # max_by skips null keys. Ties on time are broken by the event's own content (larger value,
    # then larger category), not by event_id: the 64-character hash is the widest column of
    # bronze.events, and not reading it makes the scan much lighter.
    order = F.when(known, F.struct("event_ts", "value", "category"))
    latest = F.max_by(F.struct("category", "event_ts", "value"), order)
    return (resolved.groupBy("user_id", "item_id")
            .agg(latest.alias("latest"),
                 F.min(F.when(known, F.col("event_ts"))).alias("first_ts"),
                 F.count(F.lit(1)).alias("events"),
                 F.sum(F.when(known, 0).otherwise(1)).cast("long").alias("unknown_events"))
            .select("user_id", "item_id", F.col("latest.category").alias("category"),
                    F.col("latest.event_ts").alias("ts"), F.col("latest.value").alias("value"),
                    "first_ts", "events", "unknown_events"))


def index_pairs(pairs: DataFrame, user_index: DataFrame, item_index: DataFrame,
                category_index: DataFrame) -> DataFrame:
    """Replace natural ids by dense ids.

    Every id of ``pairs`` must already be in its index (the job builds the indexes from the
    same pairs first, and checks afterwards that no row was lost in these joins).

    Args:
        pairs: ``user_id, item_id, category, ts, value`` (known categories only).
        user_index / item_index / category_index: silver index tables.

    Returns:
        ``user_idx, item_idx, category_idx, ts, value``.
    """
    return (pairs.join(user_index, "user_id").join(item_index, "item_id")
            .join(F.broadcast(category_index), "category")
            .select("user_idx", "item_idx", "category_idx", "ts", "value"))


def label_and_weight(df: DataFrame, positive_min_value: float | None, half_life_days: float,
                     train_end_epoch_s: int) -> DataFrame:
    """Add ``label`` (int 1/0) and ``weight`` (float recency decay) as in the module rules.

    Args:
        df: any rows with ``ts`` and ``value``.
        positive_min_value: threshold on ``value`` (None: every row is positive).
        half_life_days: recency half-life (> 0).
        train_end_epoch_s: the train cutoff (``valid_start``) in epoch seconds.
    """
    if half_life_days <= 0:
        raise ValueError(f"features.recency_half_life_days must be > 0, got {half_life_days}")
    if positive_min_value is None:
        label = F.lit(1)
    else:
        label = F.when(F.col("value").isNull() | (F.col("value") >= F.lit(positive_min_value)), 1).otherwise(0)
    age_days = F.greatest(F.lit(0.0), (F.lit(float(train_end_epoch_s)) - epoch_seconds("ts")) / SECONDS_PER_DAY)
    weight = F.exp(F.lit(-math.log(2.0) / half_life_days) * age_days)
    return df.withColumn("label", label.cast("int")).withColumn("weight", weight.cast("float"))
