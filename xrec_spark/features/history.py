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

from collections.abc import Callable

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.features.common import pad_ids
from xrec_spark.features.per_user import column, int_lists, map_users
from xrec_spark.names import TRAIN


def train_positives(interactions: DataFrame) -> DataFrame:
    """``user_idx, item_idx, category_idx, ts, weight`` of train rows with label 1."""
    return (interactions.where((F.col("split") == TRAIN) & (F.col("label") == 1))
            .select("user_idx", "item_idx", "category_idx", "ts", "weight"))


def check_length(length: int) -> None:
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
    check_length(length)
    recent = positives.groupBy("user_idx").agg(
        F.slice(F.sort_array(F.collect_list(F.struct("ts", "item_idx")), asc=False), 1, length).alias("recent"))
    items = F.transform("recent", lambda x: x["item_idx"])
    return (users.select("user_idx").join(recent, "user_idx", "left")
            .select("user_idx", pad_ids(items, length).alias("history")))


def _first_rows(user: np.ndarray) -> np.ndarray:
    """For rows sorted by user: True where a user's rows begin."""
    first = np.ones(len(user), dtype=bool)
    first[1:] = user[1:] != user[:-1]
    return first


def _run_start(first: np.ndarray) -> np.ndarray:
    """Each row's position of the first row of its run (``first`` marks where runs begin)."""
    return np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))


def earlier_items(user: np.ndarray, ts: np.ndarray, item: np.ndarray, length: int) -> np.ndarray:
    """For rows sorted by (user, ts, item): each row's user's items with an earlier ``ts``.

    Returns an ``(n, length)`` int32 array, latest first (same-time items by item id descending:
    the reverse of the sort order), 0-padded. Rows of the same (user, ts) share one history.
    """
    new_user = _first_rows(user)
    new_group = new_user.copy()
    new_group[1:] |= ts[1:] != ts[:-1]
    user_start, group_start = _run_start(new_user), _run_start(new_group)
    # The row just before a (user, ts) group is the latest earlier item; walk back from there.
    back = group_start[:, None] - 1 - np.arange(length)[None, :]
    return np.where(back >= user_start[:, None], item[np.maximum(back, 0)], 0).astype(np.int32)


_TIME = "ts_us"  # epoch microseconds: the time order of a per-user pass


_DAY_US = 86_400 * 1_000_000


def profile_items(user: np.ndarray, item: np.ndarray, length: int) -> np.ndarray:
    """For rows sorted by (user, ts, item): each row's user's last ``length`` items other than
    the row's own, latest first, 0-padded (``(n, length)`` int32).

    This is the user's history as of the end of train (``silver.user_history``, what serving
    reads) with the row's item left out: the history a set model is trained to complete.
    """
    new_user = _first_rows(user)
    positions = np.arange(len(user))
    user_start = _run_start(new_user)
    # A user's last row is the one before the next user's first (the final row: the end).
    user_end = np.append(np.flatnonzero(new_user)[1:] - 1, len(user) - 1)[np.cumsum(new_user) - 1]
    k = np.arange(length)[None, :]
    # Walk back from the user's latest row, stepping over the row itself once it is reached.
    own = (user_end - positions)[:, None]
    back = user_end[:, None] - k - (k >= own)
    return np.where(back >= user_start[:, None], item[np.maximum(back, 0)], 0).astype(np.int32)


def histories(users: pa.Table, length: int, as_of: str = "event") -> np.ndarray:
    """The history of every row of a whole-users table from :func:`map_positives_by_user`:
    ``as_of="event"`` :func:`earlier_items`; ``"day"``: items before the row's UTC day (times
    floored to the day keep the sort order, and rows of one user-day then share one history);
    ``"profile"``: :func:`profile_items`, the user's end-of-train history without the row's item."""
    if as_of == "profile":
        return profile_items(column(users, "user_idx"), column(users, "item_idx"), length)
    time = column(users, _TIME)
    if as_of == "day":
        time = np.floor_divide(time, _DAY_US)
    return earlier_items(column(users, "user_idx"), time, column(users, "item_idx"), length)


def map_positives_by_user(positives: DataFrame, fn: Callable[[pa.Table], pa.Table], schema: T.StructType,
                          partitions: int | None = None) -> DataFrame:
    """``fn`` over each user's train positives in time order (then item id), as whole-users
    Arrow tables (:func:`xrec_spark.features.per_user.map_users`).

    Args:
        positives: train positives with ``user_idx, item_idx, ts`` (and whatever ``fn`` reads).
        fn: whole-users table -> output table of ``schema``.
        schema: the output schema.
        partitions: shuffle partitions (default: the session's ``spark.sql.shuffle.partitions``).
    """
    parts = partitions or int(positives.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    return map_users(positives.withColumn(_TIME, F.unix_micros("ts")), fn, schema, parts, (_TIME, "item_idx"))


def _positives_table(users: pa.Table, length: int) -> pa.Table:
    return pa.table({"user_idx": users.column("user_idx"), "item_idx": users.column("item_idx"),
                     "category_idx": users.column("category_idx"), "weight": users.column("weight"),
                     "history": int_lists(histories(users, length), length)})


POSITIVES_WITH_HISTORY = T.StructType([
    T.StructField("user_idx", T.IntegerType(), False), T.StructField("item_idx", T.IntegerType(), False),
    T.StructField("category_idx", T.IntegerType(), False), T.StructField("weight", T.FloatType(), False),
    T.StructField("history", T.ArrayType(T.IntegerType(), containsNull=False), False),
])


def positives_with_history(positives: DataFrame, length: int, partitions: int | None = None) -> DataFrame:
    """Each train positive with the user's train positives strictly before it.

    One shuffle by user, then :func:`earlier_items` over whole users in numpy
    (:mod:`xrec_spark.features.per_user`).

    Args:
        positives: ``user_idx, item_idx, category_idx, ts, weight`` (train positives).
        length: history length.
        partitions: shuffle partitions (default: the session's ``spark.sql.shuffle.partitions``).

    Returns:
        ``user_idx, item_idx, category_idx, weight, history``.
    """
    check_length(length)
    return map_positives_by_user(positives, lambda users: _positives_table(users, length), POSITIVES_WITH_HISTORY,
                                 partitions)
