"""Every Delta table of the suite: name, schema, keys, partitioning, and the only I/O helpers.

Nothing else in the code builds a table path or writes a table: jobs call :class:`Lakehouse`
(``read``, ``merge``, ``overwrite``, ``append``), which resolves locations from the lakehouse
root, creates missing tables with their declared schema, retries Delta's optimistic-concurrency
conflicts a bounded number of times, and tags every commit with the writing job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar
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


@dataclass(frozen=True)
class TableSpec:
    """A Delta table of the contract in DESIGN.md."""

    layer: str
    name: str
    schema: T.StructType
    keys: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.layer}.{self.name}"

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema.fields]


def _schema(*fields: tuple[str, T.DataType, bool]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, nullable) for name, dtype, nullable in fields])


_S, _L, _I, _D, _F = T.StringType(), T.LongType(), T.IntegerType(), T.DoubleType(), T.FloatType()
_TS, _DT, _B = T.TimestampType(), T.DateType(), T.BooleanType()
_VEC = T.ArrayType(T.FloatType(), containsNull=False)
_VERSIONS = T.MapType(T.StringType(), T.LongType())
_CDF = {"delta.enableChangeDataFeed": "true"}

# ----------------------------------------------------------------------------------- bronze

BRONZE_EVENTS = TableSpec(
    "bronze", "events",
    _schema(
        ("event_id", _S, False),     # sha256 of every kept field (user, item, type, ts, value, category)
        ("user_id", _S, False),
        ("item_id", _S, False),
        ("event_type", _S, False),
        ("event_ts", _TS, False),
        ("value", _D, True),
        ("category", _S, True),       # category the event was recorded under, when the source has it
        ("source", _S, False),        # file the row came from
        ("ingest_run_id", _S, False),
        ("ingested_at", _TS, False),
    ),
    keys=("event_id",),
    properties=_CDF,
)
BRONZE_ITEMS = TableSpec(
    "bronze", "items",
    _schema(
        ("item_id", _S, False),
        ("category", _S, True),
        ("title", _S, True),
        ("text", _S, True),
        ("brand", _S, True),
        ("price", _D, True),
        ("image_vector", _VEC, True),
        ("updated_at", _TS, False),   # latest wins on MERGE
        ("source", _S, False),
    ),
    keys=("item_id",),
    properties=_CDF,
)
BRONZE_QUARANTINE = TableSpec(
    "bronze", "quarantine",
    _schema(
        ("run_id", _S, False),
        ("source", _S, False),
        ("raw", _S, True),
        ("reason", _S, False),
        ("quarantined_at", _TS, False),
    ),
)

# ----------------------------------------------------------------------------------- silver

# Dense ids start at 1: 0 is reserved for padding (history arrays) and "unknown".
USER_INDEX = TableSpec("silver", "user_index", _schema(("user_id", _S, False), ("user_idx", _I, False)),
                       keys=("user_id",))
ITEM_INDEX = TableSpec("silver", "item_index", _schema(("item_id", _S, False), ("item_idx", _I, False)),
                       keys=("item_id",))
CATEGORY_INDEX = TableSpec("silver", "category_index",
                           _schema(("category", _S, False), ("category_idx", _I, False)), keys=("category",))

# Item content for the model's item tower: one row per indexed item, cold ones included.
ITEM_FEATURES = TableSpec(
    "silver", "item_features",
    _schema(
        ("item_idx", _I, False),
        ("category_idx", _I, False),
        ("text", _S, True),            # title + text + brand, as the content encoder reads it
        ("image_vector", _VEC, True),
        ("text_vector", _VEC, True),   # precomputed sentence-encoder vector, when configured
        ("train_count", _L, False),    # positives in train (0 = cold item); popularity prior
    ),
    keys=("item_idx",),
)
# Each user's most recent items (all categories), as of the end of the train split; used by
# export and candidate generation for users' history encoder input.
USER_HISTORY = TableSpec(
    "silver", "user_history",
    _schema(("user_idx", _I, False), ("history", T.ArrayType(T.IntegerType(), containsNull=False), False)),
    keys=("user_idx",),
)

INTERACTIONS = TableSpec(
    "silver", "interactions",
    _schema(
        ("user_idx", _I, False),
        ("item_idx", _I, False),
        ("category_idx", _I, False),
        ("ts", _TS, False),
        ("value", _D, True),
        ("label", _I, False),         # implicit label from config (1 positive, 0 not)
        ("weight", _F, False),        # recency decay
        ("split", _S, False),         # train / valid / test
        ("slice", _S, True),          # valid/test rows: warm / cross_category / cold_user / cold_item
    ),
    keys=("user_idx", "item_idx"),
    partition_by=("category_idx",),
)
USER_CATEGORY_AFFINITY = TableSpec(
    "silver", "user_category_affinity",
    _schema(
        ("user_idx", _I, False),
        ("category_idx", _I, False),
        ("n", _L, False),
        ("weight", _D, False),
        ("share", _D, False),
        ("last_ts", _TS, False),
    ),
    keys=("user_idx", "category_idx"),
)
CATEGORY_TRANSFER = TableSpec(
    "silver", "category_transfer",
    _schema(
        ("src_category_idx", _I, False),
        ("dst_category_idx", _I, False),
        ("users_both", _L, False),
        ("p_dst_given_src", _D, False),
        ("lift", _D, False),
        ("score", _D, False),         # normalised co-engagement (cosine of user sets)
    ),
    keys=("src_category_idx", "dst_category_idx"),
)
TRAINING_EXAMPLES = TableSpec(
    "silver", "training_examples",
    _schema(
        ("user_idx", _I, False),
        ("item_idx", _I, False),
        ("category_idx", _I, False),
        ("label", _F, False),
        ("weight", _F, False),
        ("history", T.ArrayType(T.IntegerType(), containsNull=False), False),  # recent item_idx, fixed length
    ),
)

# ----------------------------------------------------------------------------------- gold

ITEM_EMBEDDINGS = TableSpec(
    "gold", "item_embeddings",
    _schema(("item_idx", _I, False), ("category_idx", _I, False), ("model_version", _S, False),
            ("vector", _VEC, False), ("cold", _B, False)),
    keys=("model_version", "item_idx"),
    partition_by=("model_version",),
)
USER_EMBEDDINGS = TableSpec(
    "gold", "user_embeddings",
    _schema(("user_idx", _I, False), ("category_idx", _I, False), ("model_version", _S, False),
            ("vector", _VEC, False)),
    keys=("model_version", "user_idx", "category_idx"),
    partition_by=("model_version",),
)
CANDIDATES = TableSpec(
    "gold", "candidates",
    _schema(("run_date", _DT, False), ("user_idx", _I, False), ("category_idx", _I, False),
            ("rank", _I, False), ("item_idx", _I, False), ("score", _D, False), ("source", _S, False),
            ("model_version", _S, True)),
    keys=("run_date", "user_idx", "category_idx", "rank"),
    partition_by=("run_date",),
)
RUNS = TableSpec(
    "gold", "runs",
    _schema(("run_id", _S, False), ("model_version", _S, False), ("config_hash", _S, False),
            ("input_versions", _VERSIONS, False), ("metrics", T.MapType(_S, _D), True),
            ("checkpoint_path", _S, False), ("started_at", _TS, False), ("finished_at", _TS, False),
            ("params", _S, True)),
    keys=("run_id",),
)
METRICS = TableSpec(
    "gold", "metrics",
    _schema(("eval_id", _S, False), ("run_date", _DT, True), ("model_version", _S, True),
            ("system", _S, False), ("split", _S, False), ("category", _S, False), ("slice", _S, False),
            ("metric", _S, False), ("k", _I, True), ("value", _D, True), ("groups", _L, False),
            ("ci_low", _D, True), ("ci_high", _D, True), ("input_versions", _VERSIONS, True)),
    keys=("eval_id", "system", "split", "category", "slice", "metric", "k"),
)

# ----------------------------------------------------------------------------------- meta

JOB_LOG = TableSpec(
    "meta", "job_log",
    _schema(("job", _S, False), ("run_id", _S, False), ("run_key", _S, False),
            ("input_versions", _VERSIONS, False), ("output_versions", _VERSIONS, False),
            ("summary", _S, True), ("started_at", _TS, False), ("finished_at", _TS, False)),
    keys=("job", "run_id"),
)
# The input files ingest has read (one row per source and file, the latest read): what lets a
# re-ingest skip files that have not changed since (xrec_spark/ingest/manifest.py).
INGESTED_FILES = TableSpec(
    "meta", "ingested_files",
    _schema(("source", _S, False),          # the ingest source that read it: events / items
            ("file", _S, False),            # URI as the file system lists it
            ("size", _L, False),
            ("modified_ms", _L, False),     # modification time, epoch milliseconds
            ("fingerprint", _S, False),     # sha256 of size + first and last block
            ("rules_hash", _S, False),      # hash of the config that judged its rows
            ("run_id", _S, False),
            ("ingested_at", _TS, False)),
    keys=("source", "file"),
)

ALL_TABLES: tuple[TableSpec, ...] = (
    BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE,
    USER_INDEX, ITEM_INDEX, CATEGORY_INDEX, ITEM_FEATURES, USER_HISTORY, INTERACTIONS, USER_CATEGORY_AFFINITY, CATEGORY_TRANSFER,
    TRAINING_EXAMPLES, ITEM_EMBEDDINGS, USER_EMBEDDINGS, CANDIDATES, RUNS, METRICS, JOB_LOG, INGESTED_FILES,
)


def table(qualified: str) -> TableSpec:
    """Look a table up by ``layer.name``."""
    for spec in ALL_TABLES:
        if spec.qualified == qualified:
            return spec
    raise KeyError(f"unknown table {qualified!r}; known: {', '.join(s.qualified for s in ALL_TABLES)}")


# ----------------------------------------------------------------------------------- checks


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

R = TypeVar("R")


# The same conflicts by JVM class name: some Delta paths (creating a table two writers race
# for) surface them as a raw Py4JJavaError instead of the Python classes above.
_JVM_CONFLICTS = frozenset(f"io.delta.exceptions.{cls.__name__}" for cls in RETRYABLE_CONFLICTS)


# Two writers creating the same fresh table: the loser can look at the folder after the
# winner made it but before its first commit landed, and Delta refuses a "non-empty location
# that is not a Delta table". A moment later the table exists and creation is a no-op.
_RACING_CREATE = "DELTA_CREATE_TABLE_WITH_NON_EMPTY_LOCATION"


def _is_retryable(error: Exception) -> bool:
    if isinstance(error, RETRYABLE_CONFLICTS):
        return True
    if isinstance(error, Py4JJavaError):
        return str(error.java_exception.getClass().getName()) in _JVM_CONFLICTS
    if isinstance(error, AnalysisException):
        return error.getCondition() == _RACING_CREATE
    return False


def _with_retry(action: Callable[[], R], what: str, attempts: int = 5) -> R:
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (*RETRYABLE_CONFLICTS, Py4JJavaError, AnalysisException) as e:
            if not _is_retryable(e):
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
        """Latest committed version, or None when the table does not exist."""
        if not self.exists(spec):
            return None
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

    def create_if_missing(self, spec: TableSpec) -> None:
        if self.exists(spec):
            return
        builder = (DeltaTable.createIfNotExists(self.spark).location(self.path(spec))
                   .addColumns(spec.schema))
        if spec.partition_by:
            builder = builder.partitionedBy(*spec.partition_by)
        for key, value in spec.properties.items():
            builder = builder.property(key, value)
        _with_retry(builder.execute, f"create {spec.qualified}")

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

    def shallow_clone(self, spec: TableSpec, source: "Lakehouse", version: int) -> None:
        """Make this lakehouse's ``spec`` table a shallow clone of ``source``'s at ``version``:
        new metadata, no copied data (its files stay those of the source), replacing any
        earlier clone. Lets a second root read another root's bronze (``xrec tune`` features)."""
        if not source.exists(spec):
            raise TableNotFoundError(f"cannot clone {spec.qualified}: none at {source.path(spec)}")
        sql = (f"CREATE OR REPLACE TABLE delta.`{self.path(spec)}` SHALLOW CLONE "
               f"delta.`{source.path(spec)}` VERSION AS OF {int(version)}")
        _with_retry(lambda: self.spark.sql(sql), f"shallow clone of {spec.qualified}")

    def last_operation_metrics(self, spec: TableSpec) -> dict[str, int]:
        row = DeltaTable.forPath(self.spark, self.path(spec)).history(1).select("operationMetrics").first()
        metrics = (row["operationMetrics"] or {}) if row else {}
        return {k: int(v) for k, v in metrics.items() if str(v).lstrip("-").isdigit()}
