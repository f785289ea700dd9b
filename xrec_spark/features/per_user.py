"""Per-user passes: every row of a user, in time order, handed to numpy at once.

Histories and negatives both need all of a user's train positives together (the rows before a
positive; the positives a negative must avoid). A self-join or window per user shuffles the
positives once per question asked; here they are shuffled **once** by user, sorted by
(user, time, item) inside each partition, and streamed through ``mapInArrow`` in Arrow batches
that :func:`complete_users` regroups so that no user is split across two numpy calls. The work
is vectorised over every user of a batch (thousands of users per call), not a Python loop per
user, and runs on the executors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import types as T

USER = "user_idx"


def complete_users(batches: Iterator[pa.RecordBatch], key: str = USER) -> Iterator[pa.Table]:
    """Regroup batches sorted by ``key`` into tables that each hold only whole users.

    The rows of the last user of a batch may continue in the next one: they are held back and
    put in front of the next batch (a user longer than a batch is carried until it ends).
    """
    held: pa.Table | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        if held is not None:
            table = pa.concat_tables([held, table])
        users = table.column(key).to_numpy()
        last_start = int(np.searchsorted(users, users[-1], side="left"))
        if last_start > 0:
            yield table.slice(0, last_start).combine_chunks()
        held = table.slice(last_start)
    if held is not None and held.num_rows:
        yield held.combine_chunks()


def map_users(rows: DataFrame, fn: Callable[[pa.Table], pa.Table], schema: T.StructType, partitions: int,
              order: tuple[str, ...]) -> DataFrame:
    """``fn`` over every user's rows: shuffle by user into ``partitions``, sort, stream as Arrow.

    Args:
        rows: input rows with a ``user_idx`` column (and the ``order`` columns).
        fn: whole-users table -> output table of ``schema`` (numpy inside; no Spark).
        schema: the output schema.
        partitions: shuffle partitions (one output file each when written as is).
        order: columns that order a user's rows after ``user_idx`` (ascending).
    """
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for users in complete_users(batches):
            yield from fn(users).to_batches()

    return rows.repartition(partitions, USER).sortWithinPartitions(USER, *order).mapInArrow(run, schema)


def column(table: pa.Table, name: str) -> np.ndarray:
    """A column of a whole-users table as a numpy array."""
    return table.column(name).to_numpy()


def int_lists(values: np.ndarray, width: int) -> pa.ListArray:
    """Rows of a 2-d int array as an Arrow ``list<int32>`` column (no Python objects per row)."""
    n = values.shape[0]
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.int32, copy=False).ravel()))
