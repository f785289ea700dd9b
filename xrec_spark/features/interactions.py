"""From bronze events to one labelled, weighted row per (user, item).

Rules (the contract every later job reads):

- **Category of an event** = ``bronze.events.category`` when set (non-blank), else the item's
  category from ``bronze.items``. An event whose category is unknown in both is **dropped** and
  counted (``unknown_events``, reported in the job summary): a made-up "unknown" category would
  become a task head of unrelated items in the multi-task model and a fake row/column of the
  transfer matrix, and its items could not get the non-null ``category_idx`` that
  ``silver.item_features`` needs.
- **One row per (user, item), with no look-ahead**: the pair belongs to the split of its
  **first** event (train < ``valid_start`` <= valid < ``test_start`` <= test), and its row is the
  **latest** event within that split (ties on time: the larger value, then category), with its
  category, value and time. So a train row depends on train events only: a pair seen in train
  and again later stays a train row (its later events are not relevant items; rankings exclude
  it as seen), and a pair first seen in valid and again in test is a valid row. ``first_ts``
  keeps the pair's first event time, which decides index order and the fraction cutoffs.
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
from xrec_spark.features.splits import Cutoffs


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


def pair_first_times(resolved: DataFrame) -> DataFrame:
    """``ts``: the first known-category event time of every (user, item) pair, one row per pair.

    What the fraction cutoffs are computed from: a pair's split is the split of its first event,
    so shares of these rows by day are the shares of silver.interactions rows.
    """
    return (resolved.where(F.col("category").isNotNull()).groupBy("user_id", "item_id")
            .agg(F.min("event_ts").alias("ts")))


def split_pairs(resolved: DataFrame, cutoffs: Cutoffs) -> DataFrame:
    """One row per (user, item): the latest event within the split of the pair's first event.

    Unknown-category events take no part in either choice but are counted per pair, so the
    caller can report them in the same pass over the events.

    Args:
        resolved: output of :func:`resolve_categories`.
        cutoffs: the split boundaries.

    Returns:
        ``user_id, item_id, category, ts, value, first_ts, events, unknown_events`` (events:
        all events of the pair, unknown_events: those with unknown category); ``category``,
        ``ts``, ``value`` and ``first_ts`` are null for pairs whose events all have an unknown
        category (filter with ``category IS NOT NULL``).
    """
    known = F.col("category").isNotNull()
    ts = F.col("event_ts")
    valid_start = F.timestamp_seconds(F.lit(cutoffs.valid_start_s))
    test_start = F.timestamp_seconds(F.lit(cutoffs.test_start_s))

    def latest(window: F.Column) -> F.Column:
        # max_by skips null keys. Ties on time are broken by the event's own content (larger
        # value, then larger category), not by event_id: the 64-character hash is the widest
        # column of bronze.events, and not reading it makes the scan much lighter.
        order = F.when(known & window, F.struct("event_ts", "value", "category"))
        return F.max_by(F.struct("category", "event_ts", "value"), order)

    # The earliest split window holding an event of the pair decides: its latest event is the row.
    chosen = F.coalesce(F.col("in_train"), F.col("in_valid"), F.col("in_test"))
    return (resolved.groupBy("user_id", "item_id")
            .agg(latest(ts < valid_start).alias("in_train"),
                 latest((ts >= valid_start) & (ts < test_start)).alias("in_valid"),
                 latest(ts >= test_start).alias("in_test"),
                 F.min(F.when(known, ts)).alias("first_ts"),
                 F.count(F.lit(1)).alias("events"),
                 F.sum(F.when(known, 0).otherwise(1)).cast("long").alias("unknown_events"))
            .select("user_id", "item_id", chosen.category.alias("category"), chosen.event_ts.alias("ts"),
                    chosen.value.alias("value"), "first_ts", "events", "unknown_events"))


def index_pairs(pairs: DataFrame, user_index: DataFrame, item_index: DataFrame,
                category_index: DataFrame) -> DataFrame:
    """Replace natural ids by dense ids.

    Every id of ``pairs`` must already be in its index (the job builds the indexes from the
    same pairs first, and checks afterwards that no row was lost in these joins).

    Args:
        pairs: ``user_id, item_id, category, ts, value, split`` (known categories only).
        user_index / item_index / category_index: silver index tables.

    Returns:
        ``user_idx, item_idx, category_idx, ts, value, split``.
    """
    return (pairs.join(user_index, "user_id").join(item_index, "item_id")
            .join(F.broadcast(category_index), "category")
            .select("user_idx", "item_idx", "category_idx", "ts", "value", "split"))


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
