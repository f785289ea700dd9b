"""Every Delta table of the suite: name, schema, keys, partitioning (the contract in DESIGN.md).

Declarations only, with no Delta access: :mod:`xrec_spark.tables` re-exports them next to the
:class:`~xrec_spark.tables.Lakehouse` that reads and writes them, so callers import both from
``xrec_spark.tables``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from pyspark.sql import types as T


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
