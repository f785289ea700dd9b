"""Names and small column expressions shared by the feature transforms.

Split and slice names are the ones ``xrec_spark.eval`` reads; they are repeated here rather than
imported so that features does not depend on eval.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

TRAIN, VALID, TEST = "train", "valid", "test"

# Slices of valid/test rows, in precedence order: the first that applies wins.
COLD_ITEM, COLD_USER, WARM, CROSS_CATEGORY = "cold_item", "cold_user", "warm", "cross_category"
SLICE_PRECEDENCE: tuple[str, ...] = (COLD_ITEM, COLD_USER, WARM, CROSS_CATEGORY)

SECONDS_PER_DAY = 86_400
_MANTISSA = 2**53


def uniform01(seed: int, tag: str, *cols: str | Column) -> Column:
    """A reproducible uniform draw in [0, 1) from a hash of ``seed``, ``tag`` and ``cols``.

    ``F.rand(seed)`` depends on the partition a row lands in and its position there, which
    shuffles do not preserve; hashing the row's own key gives the same draw on every run and on
    every cluster layout. ``tag`` separates independent draws made from the same key.
    """
    h = F.xxhash64(F.lit(seed), F.lit(tag), *cols)
    # The top 53 bits of the 64-bit hash, as a double in [0, 1).
    return F.shiftrightunsigned(h, 11).cast("double") / F.lit(float(_MANTISSA))


def pad_ids(arr: str | Column, length: int) -> Column:
    """``arr`` (array<int>) cut to ``length`` elements and right-padded with 0 to exactly that."""
    col = F.col(arr) if isinstance(arr, str) else arr
    # coalesce per element makes the type array<int NOT NULL>, which the tables declare (a cast
    # cannot narrow containsNull).
    head = F.transform(F.slice(F.coalesce(col, F.array().cast("array<int>")), 1, length),
                       lambda x: F.coalesce(x.cast("int"), F.lit(0)))
    return F.concat(head, F.array_repeat(F.lit(0), F.lit(length) - F.size(head)))


def epoch_seconds(ts: str | Column) -> Column:
    """Seconds since the epoch (double, sub-second precision kept) of a timestamp column."""
    col = F.col(ts) if isinstance(ts, str) else ts
    return F.unix_micros(col).cast("double") / F.lit(1e6)
