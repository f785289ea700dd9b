"""The only I/O of the suite's Delta tables: :class:`Lakehouse`, plus the declarations it serves.

Nothing else in the code builds a table path, writes a table or reads a Delta log: jobs call
:class:`Lakehouse` (``read``, ``merge``, ``overwrite``, ``append``, and for lineage ``version``,
``first_version_after``, ``inserted_since``), which resolves locations from the lakehouse root,
creates missing tables with their declared schema, retries Delta's optimistic-concurrency
conflicts a bounded number of times, and tags every commit with the writing job. The tables
themselves (name, schema, keys, partitioning) are declared in :mod:`xrec_spark.table_specs` and
re-exported here, so callers import specs and lakehouse from one place.
"""

from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlparse

from delta.exceptions import (
    ConcurrentAppendException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    MetadataChangedException,
    ProtocolChangedException,
)
from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.delta_log import (  # noqa: F401  (latest_commit re-exported)
    commit_actions, commit_metrics, latest_commit)
from xrec_spark.names import SAFE_ID_PATTERN
from xrec_spark.table_specs import (  # noqa: F401  (re-exported: the one import place of table specs)
    ALL_TABLES, BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE, CANDIDATES, CATEGORY_INDEX, CATEGORY_TRANSFER,
    INGESTED_FILES, INTERACTIONS, ITEM_EMBEDDINGS, ITEM_FEATURES, ITEM_INDEX, JOB_LOG, METRICS, RUNS,
    TRAINING_EXAMPLES, USER_CATEGORY_AFFINITY, USER_EMBEDDINGS, USER_HISTORY, USER_INDEX, TableSpec, table,
)

log = logging.getLogger(__name__)

# Conflicts a retry can resolve: another writer committed first on files we did not touch
# semantically (MERGE re-reads the new snapshot and skips rows already present).
RETRYABLE_CONFLICTS: tuple[type[Exception], ...] = (
    ConcurrentAppendException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    MetadataChangedException,
    ProtocolChangedException,
)


class TableNotFoundError(RuntimeError):
    """A job needs a table that does not exist yet (run the upstream job first)."""


class SchemaMismatchError(ValueError):
    """A DataFrame does not have the columns or types a table declares."""


# ----------------------------------------------------------------------------------- checks


_SAFE_LITERAL = re.compile(SAFE_ID_PATTERN)


R = TypeVar("R")


def each_table(specs: Iterable[TableSpec], fn: Callable[[TableSpec], R], workers: int = 4) -> list[R]:
    """``[fn(spec) for spec in specs]`` on up to ``workers`` threads, in order: the small Spark
    jobs of several tables (log replay, file listing, a stats count) then overlap instead of
    each waiting on its own scheduling."""
    specs = list(specs)
    if len(specs) <= 1:
        return [fn(spec) for spec in specs]
    with ThreadPoolExecutor(max_workers=min(workers, len(specs)), thread_name_prefix="tables") as pool:
        return list(pool.map(fn, specs))


def sql_string(value: str, what: str) -> str:
    """``value`` as a quoted SQL string literal for a replaceWhere predicate.

    Only ids made of letters, digits and ``. _ : + -`` are accepted, so a predicate can never be
    widened by a quote in the value.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string; got {type(value).__name__}")
    if not _SAFE_LITERAL.match(value):
        raise ValueError(f"{what} {value!r} may only hold letters, digits and . _ : + -")
    return f"'{value}'"




def check_columns(df: DataFrame, spec_or_schema: TableSpec | T.StructType, where: str) -> None:
    """Raise :class:`SchemaMismatchError` naming missing columns and wrong types (reads no data)."""
    schema = spec_or_schema.schema if isinstance(spec_or_schema, TableSpec) else spec_or_schema
    have = {f.name: f.dataType for f in df.schema.fields}
    missing = [f.name for f in schema.fields if f.name not in have]
    wrong = [f"{f.name} ({have[f.name].simpleString()}, expected {f.dataType.simpleString()})"
             for f in schema.fields if f.name in have and have[f.name] != f.dataType]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if wrong:
            parts.append(f"wrong types: {', '.join(wrong)}")
        raise SchemaMismatchError(f"{where}: {'; '.join(parts)}")


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Select the table's columns in order, cast to the declared types; names missing columns."""
    missing = [c for c in spec.columns if c not in df.columns]
    if missing:
        raise SchemaMismatchError(f"rows for {spec.qualified}: missing columns: {', '.join(missing)}")
    return df.select([_conformed(df, f, spec).alias(f.name) for f in spec.schema.fields])


def _conformed(df: DataFrame, field: T.StructField, spec: TableSpec) -> Column:
    """``field``'s column cast to its declared type. Spark cannot cast an array whose elements
    may be null to one declared without nulls, and Delta would store a null element of such a
    column as 0; so those arrays are checked row by row instead, failing on a null element."""
    source = df.schema[field.name].dataType
    target = field.dataType
    if (isinstance(target, T.ArrayType) and isinstance(source, T.ArrayType) and not target.containsNull
            and source.containsNull):
        col = df[field.name].cast(T.ArrayType(target.elementType, containsNull=True))
        message = f"rows for {spec.qualified}: column {field.name} has an array with a null element"
        return F.when(F.exists(col, lambda x: x.isNull()), F.raise_error(F.lit(message))).otherwise(col)
    return df[field.name].cast(target)


# ----------------------------------------------------------------------------------- lakehouse


# The same conflicts by JVM class name: some Delta paths (creating a table two writers race
# for) surface them as a raw Py4JJavaError instead of the Python classes above.
_JVM_CONFLICTS = frozenset(f"io.delta.exceptions.{cls.__name__}" for cls in RETRYABLE_CONFLICTS)


# Two writers creating the same fresh table: the loser can look at the folder after the
# winner made it but before its first commit landed, and Delta refuses a "non-empty location
# that is not a Delta table", or finds a _delta_log with no commit in it yet and says the table
# "doesn't exist". A moment later the table exists and creation is a no-op. Only creation
# retries on these: anywhere else a missing table is a real error.
_RACING_CREATE = frozenset({"DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION", "DELTA_TABLE_NOT_FOUND"})


def _is_retryable(error: Exception, conditions: frozenset[str] = frozenset()) -> bool:
    if isinstance(error, RETRYABLE_CONFLICTS):
        return True
    if isinstance(error, Py4JJavaError):
        return str(error.java_exception.getClass().getName()) in _JVM_CONFLICTS
    if isinstance(error, AnalysisException):
        return error.getCondition() in conditions
    return False


def _with_retry(action: Callable[[], R], what: str, attempts: int = 5,
                conditions: frozenset[str] = frozenset()) -> R:
    """Run ``action``, retrying Delta's concurrent-write conflicts (and the analysis errors
    named by ``conditions``) with exponential back-off."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (*RETRYABLE_CONFLICTS, Py4JJavaError, AnalysisException) as e:
            if not _is_retryable(e, conditions):
                raise
            if attempt == attempts:
                raise RuntimeError(f"{what}: gave up after {attempts} concurrent-write conflicts") from e
            wait = 0.2 * 2 ** (attempt - 1)
            log.warning("%s: %s, retrying in %.1fs (%d/%d)", what, type(e).__name__, wait, attempt, attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")


class Lakehouse:
    """Locations and I/O of every table under one root (local folder or URI)."""

    def __init__(self, spark: SparkSession, root: str) -> None:
        self.spark = spark
        self.root = self._absolute(root)

    @staticmethod
    def _absolute(root: str) -> str:
        if urlparse(root).scheme in ("", "file"):
            return str(Path(root.removeprefix("file:")).resolve())
        return root.rstrip("/")

    def path(self, spec: TableSpec) -> str:
        return f"{self.root}/{spec.layer}/{spec.name}"

    def exists(self, spec: TableSpec) -> bool:
        return DeltaTable.isDeltaTable(self.spark, self.path(spec))

    def version(self, spec: TableSpec) -> int | None:
        """Latest committed version, or None when the table does not exist.

        Read from the names of the commit files in ``_delta_log`` (the listing Delta's own
        snapshot starts from) instead of a DESCRIBE HISTORY query: no Spark job, about 30x
        faster, and every job asks for versions dozens of times (lineage, merges, pins)."""
        if not self.exists(spec):
            return None
        latest = latest_commit(self.spark, self.path(spec))
        if latest is not None:
            return latest
        row = DeltaTable.forPath(self.spark, self.path(spec)).history(1).select("version").first()
        return int(row["version"]) if row else None

    def versions(self, specs: Iterable[TableSpec]) -> dict[str, int]:
        """``{layer.name: version}`` for the existing tables among ``specs`` (lineage)."""
        out = {}
        for spec in specs:
            v = self.version(spec)
            if v is not None:
                out[spec.qualified] = v
        return out

    def read(self, spec: TableSpec, version: int | None = None) -> DataFrame:
        """The table as a DataFrame, optionally at a pinned version (time travel)."""
        if not self.exists(spec):
            raise TableNotFoundError(
                f"table {spec.qualified} does not exist at {self.path(spec)}; run the job that "
                "writes it first (see README: ingest -> features -> train -> embeddings -> candidates)"
            )
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.path(spec))

    def files(self, spec: TableSpec, version: int | None = None) -> list[str]:
        """Absolute URIs of the Parquet files of one table version (for petastorm/arrow readers)."""
        return sorted(self.read(spec, version).inputFiles())

    def first_version_after(self, spec: TableSpec, moment: datetime) -> int | None:
        """The first version of ``spec`` committed after ``moment`` (UTC), or None (also when the
        table does not exist). Reads only the table's Delta log."""
        if not self.exists(spec):
            return None
        history = DeltaTable.forPath(self.spark, self.path(spec)).history().select("version", "timestamp")
        row = history.where(F.col("timestamp") > F.lit(moment)).agg(F.min("version").alias("v")).first()
        return None if row is None or row["v"] is None else int(row["v"])

    def inserted_since(self, spec: TableSpec, version: int) -> DataFrame:
        """Rows inserted into ``spec`` by the commits from ``version`` on, read from its Change
        Data Feed (only those commits' changes, not the table); the table must declare
        ``delta.enableChangeDataFeed``."""
        if spec.properties.get("delta.enableChangeDataFeed") != "true":
            raise ValueError(f"{spec.qualified} has no Change Data Feed (delta.enableChangeDataFeed is not "
                             "set in its TableSpec properties)")
        changes = (self.spark.read.format("delta").option("readChangeFeed", "true")
                   .option("startingVersion", int(version)).load(self.path(spec)))
        return changes.where(F.col("_change_type") == "insert")

    def create_if_missing(self, spec: TableSpec) -> None:
        if self.exists(spec):
            return
        builder = (DeltaTable.createIfNotExists(self.spark).location(self.path(spec))
                   .addColumns(spec.schema))
        if spec.partition_by:
            builder = builder.partitionedBy(*spec.partition_by)
        for key, value in spec.properties.items():
            builder = builder.property(key, value)
        _with_retry(builder.execute, f"create {spec.qualified}", conditions=_RACING_CREATE)

    def _writer(self, df: DataFrame, spec: TableSpec, job: str | None):
        writer = df.write.format("delta")
        if job:
            writer = writer.option("userMetadata", json.dumps({"job": job}))
        return writer

    def overwrite(self, spec: TableSpec, df: DataFrame, replace_where: str | None = None,
                  job: str | None = None) -> None:
        """Replace the table's content (or only the rows matching ``replace_where``) atomically."""
        data = conform(df, spec)
        self.create_if_missing(spec)
        writer = self._writer(data, spec, job).mode("overwrite")
        if replace_where:
            writer = writer.option("replaceWhere", replace_where)
        else:
            writer = writer.option("overwriteSchema", "false")
        _with_retry(lambda: writer.save(self.path(spec)), f"overwrite {spec.qualified}")

    def append(self, spec: TableSpec, df: DataFrame, job: str | None = None) -> None:
        data = conform(df, spec)
        self.create_if_missing(spec)
        _with_retry(lambda: self._writer(data, spec, job).mode("append").save(self.path(spec)),
                    f"append {spec.qualified}")

    def merge(self, spec: TableSpec, df: DataFrame, keys: Iterable[str] | None = None,
              update: bool = True, job: str | None = None) -> dict[str, int]:
        """Upsert ``df`` on ``keys`` (default: the table's keys): insert new rows, and update
        matched rows when ``update`` (else matched rows are left as they are).

        Returns Delta's operation metrics (``numTargetRowsInserted`` etc.) as ints; an empty
        dict when there was nothing to change (Delta then commits no new version).
        """
        data = conform(df, spec)
        on = list(keys or spec.keys)
        if not on:
            raise ValueError(f"merge into {spec.qualified}: no key columns given or declared")
        self.create_if_missing(spec)
        before = self.version(spec)
        created = commit_actions(self.spark, self.path(spec), 0) if before == 0 else None
        if created is not None and not any("add" in action for action in created):
            return self._first_write(spec, data, on, job)
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in on)

        def run() -> None:
            target = DeltaTable.forPath(self.spark, self.path(spec))
            merger = target.alias("t").merge(data.alias("s"), condition)
            if update:
                merger = merger.whenMatchedUpdateAll()
            merger.whenNotMatchedInsertAll().execute()

        if job:
            self.spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", json.dumps({"job": job}))
        try:
            _with_retry(run, f"merge into {spec.qualified}")
        finally:
            if job:
                self.spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")
        if self.version(spec) == before:
            return {}
        return self.last_operation_metrics(spec)

    def _first_write(self, spec: TableSpec, data: DataFrame, keys: list[str], job: str | None) -> dict[str, int]:
        """A MERGE into a table still empty since its creation, as an append: the same rows
        (nothing in the target to match), without MERGE's join and file search (about 3 s of
        fixed cost each on 2 cores; a first ingest and a first features build make eight).

        A blind append does not conflict with another writer's, so when any other commit landed
        beside ours (the table is past version 1 afterwards) the table is rewritten with one row
        per key, an overwrite that conflicts with, and is retried after, concurrent writes: the
        state a MERGE would have left. Metrics as a MERGE's (``numTargetRowsInserted``)."""
        self.append(spec, data, job)
        if self.version(spec) == 1:   # ours, right after the empty creation
            metrics = self.last_operation_metrics(spec, 1)
            return {"numTargetRowsInserted": metrics.get("numOutputRows", 0), **metrics}
        log.warning("%s: another writer committed beside this first write; keeping one row per key %s",
                    spec.qualified, keys)
        _with_retry(lambda: self._writer(self.read(spec).dropDuplicates(keys), spec, job).mode("overwrite")
                    .save(self.path(spec)), f"de-duplicate {spec.qualified}")
        return {"numTargetRowsInserted": data.count()}

    def shallow_clone(self, spec: TableSpec, source: "Lakehouse", version: int) -> None:
        """Make this lakehouse's ``spec`` table a shallow clone of ``source``'s at ``version``:
        new metadata, no copied data (its files stay those of the source), replacing any
        earlier clone. Lets a second root read another root's bronze (``xrec tune`` features)."""
        if not source.exists(spec):
            raise TableNotFoundError(f"cannot clone {spec.qualified}: none at {source.path(spec)}")
        sql = (f"CREATE OR REPLACE TABLE delta.`{self.path(spec)}` SHALLOW CLONE "
               f"delta.`{source.path(spec)}` VERSION AS OF {int(version)}")
        _with_retry(lambda: self.spark.sql(sql), f"shallow clone of {spec.qualified}")

    def last_operation_metrics(self, spec: TableSpec, version: int | None = None) -> dict[str, int]:
        """Delta's operation metrics of commit ``version`` (default: the latest) as ints, read
        from the commit file (no Spark job), else from the table's history."""
        version = self.version(spec) if version is None else version
        found = commit_metrics(self.spark, self.path(spec), version) if version is not None else None
        if found is not None:
            return found
        history = DeltaTable.forPath(self.spark, self.path(spec)).history()
        row = history.where(F.col("version") == version).select("operationMetrics").first()
        metrics = (row["operationMetrics"] or {}) if row else {}
        return {k: int(v) for k, v in metrics.items() if str(v).lstrip("-").isdigit()}
