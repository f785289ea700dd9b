"""Stable dense indexes: natural id -> int starting at 1 (0 is padding / "no item").

Assignment rule: ids not yet in the index are numbered after the current maximum, in order of
first-seen time, then natural id (string order). The job MERGEs only these new rows (insert,
never update), so a number once given never changes, a re-run on unchanged input adds nothing,
and a run after new events appends the new ids after the old maximum.

First-seen time of an id is its earliest event time; for ids known only from the item catalogue
(``bronze.items``, no event yet) it is the catalogue row's ``updated_at``.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def first_seen(events_side: DataFrame, catalogue_side: DataFrame | None = None) -> DataFrame:
    """Earliest time of each natural id, event times taking precedence over catalogue times.

    Args:
        events_side: ``id, ts`` from events (several rows per id allowed).
        catalogue_side: ``id, ts`` from the item catalogue, or None.

    Returns:
        ``id, first_ts`` with one row per id.
    """
    rows = events_side.select("id", F.lit(0).alias("origin"), "ts")
    if catalogue_side is not None:
        rows = rows.unionByName(catalogue_side.select("id", F.lit(1).alias("origin"), "ts"))
    # min over (origin, ts): any event time beats every catalogue time.
    first = F.min(F.struct("origin", "ts"))
    return (rows.where(F.col("id").isNotNull() & F.col("ts").isNotNull())
            .groupBy("id").agg(first.alias("first")).select("id", F.col("first.ts").alias("first_ts")))


def new_index_rows(candidates: DataFrame, existing: DataFrame, id_col: str, idx_col: str) -> DataFrame:
    """Rows to insert into an index: the candidates it lacks, numbered after its maximum.

    Args:
        candidates: ``id, first_ts`` (from :func:`first_seen`).
        existing: the current index, columns ``id_col, idx_col`` (may be empty).
        id_col / idx_col: the index's column names, e.g. ``user_id`` / ``user_idx``.

    Returns:
        ``id_col, idx_col`` for the new ids only (empty when there are none).
    """
    new = candidates.join(existing.select(F.col(id_col).alias("id")), "id", "left_anti")
    offset = existing.agg(F.coalesce(F.max(idx_col), F.lit(0)).cast("long").alias("offset"))
    # A global row_number runs in one partition; fine because it only sees the ids that are
    # new in this run (at most the distinct users/items, far fewer than events), and it is what
    # makes the numbering independent of partitioning.
    order = Window.orderBy("first_ts", "id")
    return (new.crossJoin(offset)
            .select(F.col("id").alias(id_col),
                    (F.col("offset") + F.row_number().over(order)).cast("int").alias(idx_col)))
