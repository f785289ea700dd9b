"""Global temporal split (train < valid < test) and evaluation slices.

Cutoffs are whole UTC days: ``valid_start`` and ``test_start`` are midnights, a row is train when
``ts < valid_start``, valid when ``valid_start <= ts < test_start``, test otherwise.

- **Dates** (``split.valid_start`` / ``split.test_start``): used as given.
- **Fractions**: ``valid_start`` is the first day at which the cumulative share of interactions
  (rows of ``silver.interactions``, in day order) exceeds ``1 - valid_fraction - test_fraction``;
  ``test_start`` the first at which it exceeds ``1 - test_fraction``. Whole days keep one day's
  rows together (Ciao has day precision), so train holds at most its fraction and the day that
  straddles a boundary goes to the later split. ``test_fraction = 0`` puts ``test_start`` after
  the last day (no test rows).

Users and items first seen after ``valid_start`` simply have all their rows in valid/test; they
form the cold slices.

Slices of valid/test rows, first match wins (train rows: null). "Train interaction" means any
train row of ``silver.interactions`` (either label): the model has seen the id in training.

1. ``cold_item``: the item has no train interaction;
2. ``cold_user``: the user has no train interaction;
3. ``warm``: the user has a train interaction in this row's category;
4. ``cross_category``: the user has train interactions, only in other categories.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone

from pyspark.sql import DataFrame, Row, Window
from pyspark.sql import functions as F

from xrec_spark.config import SplitConfig
from xrec_spark.features.common import SECONDS_PER_DAY
from xrec_spark.names import COLD_ITEM, COLD_USER, CROSS_CATEGORY, TEST, TRAIN, VALID, WARM

_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class Cutoffs:
    """Split boundaries as days since the epoch (UTC midnights)."""

    valid_start_day: int
    test_start_day: int

    def __post_init__(self) -> None:
        if self.valid_start_day > self.test_start_day:
            raise ValueError(f"valid_start ({self.valid_start}) must not be after test_start ({self.test_start})")

    @property
    def valid_start_s(self) -> int:
        return self.valid_start_day * SECONDS_PER_DAY

    @property
    def test_start_s(self) -> int:
        return self.test_start_day * SECONDS_PER_DAY

    @property
    def valid_start(self) -> date:
        return date.fromordinal(_EPOCH.toordinal() + self.valid_start_day)

    @property
    def test_start(self) -> date:
        return date.fromordinal(_EPOCH.toordinal() + self.test_start_day)

    @classmethod
    def from_dates(cls, valid_start: date, test_start: date) -> "Cutoffs":
        return cls((valid_start - _EPOCH).days, (test_start - _EPOCH).days)

    @classmethod
    def from_row(cls, row: Row) -> "Cutoffs":
        """From the single row of :func:`fraction_cutoffs`."""
        if row is None or row["valid_start_day"] is None:
            raise ValueError("silver.interactions: no rows to split (is bronze.events empty?)")
        return cls(int(row["valid_start_day"]), int(row["test_start_day"]))


def _day(ts: str) -> F.Column:
    return F.floor(F.unix_seconds(F.col(ts)) / SECONDS_PER_DAY).cast("long")


def fraction_cutoffs(df: DataFrame, valid_fraction: float, test_fraction: float) -> DataFrame:
    """One row ``valid_start_day, test_start_day`` (long, days since epoch) from fractions.

    Args:
        df: rows to split, with a ``ts`` timestamp column.
        valid_fraction / test_fraction: shares of rows for valid and test (sum < 1).
    """
    if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 1):
        raise ValueError("features.split: valid_fraction and test_fraction must be >= 0 with a sum < 1, "
                         f"got {valid_fraction} and {test_fraction}")
    q_valid = 1.0 - valid_fraction - test_fraction
    q_test = 1.0 - test_fraction
    per_day = df.groupBy(_day("ts").alias("day")).agg(F.count(F.lit(1)).alias("n"))
    # Few thousand days at most: the unpartitioned running sum is cheap.
    running = Window.orderBy("day").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    total = Window.partitionBy()
    cum = per_day.select("day", F.sum("n").over(running).alias("cum"), F.sum("n").over(total).alias("total"))

    def first_day_over(q: float) -> F.Column:
        # The 1e-6 keeps q * total that should be a whole number (0.7 * 10) from rounding below it.
        return F.min(F.when(F.col("cum") > F.col("total") * F.lit(q) + F.lit(1e-6), F.col("day")))

    agg = cum.agg(first_day_over(q_valid).alias("v"), first_day_over(q_test).alias("t"),
                  F.max("day").alias("last"))
    test_start = F.coalesce(F.col("t"), F.col("last") + 1)
    return agg.select(F.coalesce(F.col("v"), test_start).alias("valid_start_day"),
                      test_start.alias("test_start_day"))


def resolve_cutoffs_config(split: SplitConfig) -> Cutoffs | None:
    """Cutoffs fixed by configured dates, or None when they come from fractions of the data."""
    if split.valid_start is not None and split.test_start is not None:
        return Cutoffs.from_dates(split.valid_start, split.test_start)
    return None


def assign_split(df: DataFrame, cutoffs: Cutoffs) -> DataFrame:
    """Add ``split`` (train / valid / test) from ``ts`` and the cutoffs."""
    valid_start = F.timestamp_seconds(F.lit(cutoffs.valid_start_s))
    test_start = F.timestamp_seconds(F.lit(cutoffs.test_start_s))
    split = (F.when(F.col("ts") < valid_start, TRAIN)
             .when(F.col("ts") < test_start, VALID).otherwise(TEST))
    return df.withColumn("split", split)


def assign_slices(df: DataFrame) -> DataFrame:
    """Add ``slice`` to rows with ``user_idx, item_idx, category_idx, split``; train rows get null."""
    is_train = (F.col("split") == TRAIN).cast("int")
    item_seen = F.max(is_train).over(Window.partitionBy("item_idx")) == 1
    user_seen = F.max(is_train).over(Window.partitionBy("user_idx")) == 1
    # Partitioned by user first, so this window reuses the same shuffle.
    user_cat_seen = F.max(is_train).over(Window.partitionBy("user_idx", "category_idx")) == 1
    slice_ = (F.when(F.col("split") == TRAIN, F.lit(None).cast("string"))
              .when(~F.col("_item_seen"), COLD_ITEM)
              .when(~F.col("_user_seen"), COLD_USER)
              .when(F.col("_user_cat_seen"), WARM)
              .otherwise(CROSS_CATEGORY))
    return (df.withColumn("_user_seen", user_seen).withColumn("_user_cat_seen", user_cat_seen)
            .withColumn("_item_seen", item_seen)
            .withColumn("slice", slice_).drop("_item_seen", "_user_seen", "_user_cat_seen"))


def day_to_datetime(day: int) -> datetime:
    """UTC midnight of a day number (for summaries)."""
    return datetime.fromtimestamp(day * SECONDS_PER_DAY, tz=timezone.utc)
