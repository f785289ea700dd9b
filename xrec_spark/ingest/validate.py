"""Event validation: source columns -> bronze fields plus a rejection reason per row.

Transforms only (DataFrame in, DataFrame out, no actions). Each row gets the FIRST failing
check, in the order of :data:`REASONS`; rows that pass every check and share an ``event_id``
keep the first one in (file, position) order and reject the others as duplicates.

Normalisation rules (documented in the README, "Ingest and sources"):

- ids: cast to string, leading/trailing ASCII whitespace trimmed, unicode kept as is; empty
  after trimming counts as missing.
- timestamps: timestamp/date columns as they are; numbers (and strings that are plain numbers)
  as epoch ``ts_unit``; other strings parsed with ``ts_format`` (Spark datetime pattern) or,
  failing that, as ISO 8601 (date only, or date and time with ``T`` or a space, optional seconds
  and fraction, optional zone ``Z`` / ``±HH`` / ``±HHMM`` / ``±HH:MM``); converted to UTC, a
  time without zone read as UTC.
- value: a number; null is allowed (an event without a rating); anything else that is not a
  finite number inside [value_min, value_max] is "value out of range".
- event type: trimmed and lower-cased; must be one of ``ingest.event_types``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xrec_spark.config import EventSource, IngestConfig, TimestampUnit
from xrec_spark.ingest.readers import CORRUPT, META_COLUMNS, ORDINAL, SOURCE_FILE

MALFORMED = "malformed line"
MISSING_ID = "missing id"
UNPARSEABLE_TS = "unparseable timestamp"
TS_OUT_OF_RANGE = "timestamp out of range"
VALUE_OUT_OF_RANGE = "value out of range"
UNKNOWN_EVENT_TYPE = "unknown event type"
DUPLICATE = "duplicate within batch"
# Precedence: a row is quarantined for the first check it fails.
REASONS: tuple[str, ...] = (MALFORMED, MISSING_ID, UNPARSEABLE_TS, TS_OUT_OF_RANGE,
                            VALUE_OUT_OF_RANGE, UNKNOWN_EVENT_TYPE, DUPLICATE)

# Columns of classify_events' output, in order.
CLASSIFIED_EVENT_COLUMNS: tuple[str, ...] = (
    "event_id", "user_id", "item_id", "event_type", "event_ts", "value", "category",
    "source", "raw", "reason", ORDINAL)

# Beyond year ~9999 in seconds: larger numbers cannot be timestamps (and would overflow).
_MAX_EPOCH_SECONDS = 253_402_300_800
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# The ISO 8601 forms accepted besides ts_format (checked on the upper-cased text). Spark's own
# cast is looser: it reads "10:00" as today at 10:00 and "2020-1-1" as a date, which an event
# log never means; those stay unparseable.
_ISO_8601 = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$"
_SEP = "\u001f"  # unit separator: cannot occur in normalised ids by accident
ASCII_WHITESPACE = " \t\n\u000b\f\r"  # what a regular expression's \s matches


def normalise_text(col: Column) -> Column:
    """String with leading/trailing ASCII whitespace removed; null when empty."""
    # btrim() with a character set, not a regular expression: the regex (^\s+|\s+$) on the ids
    # of every row took more CPU than reading the file.
    trimmed = F.btrim(col.cast(T.StringType()), F.lit(ASCII_WHITESPACE))
    return F.when(trimmed != "", trimmed)


def source_row(df: DataFrame) -> Column:
    """The source columns of a row as one struct, for :func:`rejected_text`."""
    return F.struct(*[F.col(f"`{c}`") for c in df.columns if c not in META_COLUMNS])


def rejected_text(reason: Column, corrupt: Column, row: Column) -> Column:
    """The raw row as text (the corrupt line itself, else JSON of :func:`source_row`) when
    ``reason`` rejects it; null for an accepted row, whose text nothing reads (JSON of every
    row was half of what ingest caches, and the cache is built on every run)."""
    return F.when(reason.isNotNull(), F.coalesce(corrupt, F.to_json(row)))


def _epoch_to_ts(number: Column, unit: TimestampUnit) -> Column:
    seconds = number / 1000.0 if unit is TimestampUnit.MILLIS else number
    finite = ~F.isnan(seconds) & (F.abs(seconds) < F.lit(_MAX_EPOCH_SECONDS))
    return F.when(finite, F.timestamp_micros(F.round(seconds * 1_000_000).cast(T.LongType())))


def parse_timestamp(col: Column, dtype: T.DataType, unit: TimestampUnit, fmt: str) -> Column:
    """Timestamp (UTC) from a source column of any supported type; null when unparseable."""
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return col.cast(T.TimestampType())
    if isinstance(dtype, T.NumericType):
        return _epoch_to_ts(col.cast(T.DoubleType()), unit)
    text = normalise_text(col)
    formatted = F.coalesce(F.try_to_timestamp(text, F.lit(fmt)), iso_timestamp(text))
    return F.when(text.rlike(_NUMBER), _epoch_to_ts(text.try_cast(T.DoubleType()), unit)).otherwise(formatted)


def iso_timestamp(text: Column) -> Column:
    """UTC timestamp of an ISO 8601 text (see :data:`_ISO_8601`); null for any other text and
    for impossible dates or times (2020-02-30, 25:00). Fractions beyond microseconds are cut."""
    upper = F.upper(text)  # RFC 3339 allows a lower-case t and z
    # Spark's cast wants seconds before a zone ("10:15Z" -> null): add them when missing.
    with_seconds = F.regexp_replace(upper, r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2})(Z|[+-][0-9:]+|)$", "$1:00$2")
    # The session time zone is UTC (session.py), so a time without a zone is read as UTC.
    return F.when(upper.rlike(_ISO_8601), with_seconds.try_cast(T.TimestampType()))


def parse_number(col: Column, dtype: T.DataType) -> Column:
    """Double from a numeric or string column; null when absent or not a number."""
    if isinstance(dtype, T.NumericType):
        return col.cast(T.DoubleType())
    if isinstance(dtype, T.BooleanType):
        return F.lit(None).cast(T.DoubleType())
    return normalise_text(col).try_cast(T.DoubleType())


def _is_present(col: Column, dtype: T.DataType) -> Column:
    return col.isNotNull() if isinstance(dtype, T.NumericType) else normalise_text(col).isNotNull()


def event_id(user: Column, item: Column, event_type: Column, ts: Column, value: Column,
             category: Column) -> Column:
    """sha256 of every field bronze keeps, so only rows equal in all of them collide."""
    parts = [user, item, event_type, F.unix_micros(ts).cast(T.StringType()),
             value.cast(T.StringType()), category]
    return F.sha2(F.concat_ws(_SEP, *[F.coalesce(p, F.lit("\u0000")) for p in parts]), 256)


def classify_events(raw: DataFrame, source: EventSource, rules: IngestConfig, now: datetime) -> DataFrame:
    """Map a raw events DataFrame (from ``readers.read_source``) to bronze fields and reasons.

    Output columns (:data:`CLASSIFIED_EVENT_COLUMNS`): event_id (null for rejected rows),
    user_id, item_id, event_type, event_ts, value, category, source (file URI), raw (the row as
    text; null for accepted rows), reason (null = accepted, else one of :data:`REASONS`),
    _ordinal. ``now`` fixes the upper timestamp bound (now + future_tolerance_days) for the
    whole run.
    """
    cols = source.columns
    types = {f.name: f.dataType for f in raw.schema.fields}

    def src(name: str | None) -> Column:
        return F.col(f"`{name}`") if name else F.lit(None).cast(T.StringType())

    allowed = sorted({t.strip().lower() for t in rules.event_types})
    if cols.event_type:
        etype = F.lower(normalise_text(src(cols.event_type)))
    else:
        etype = F.lit(source.default_event_type.strip().lower())
    value_present = _is_present(src(cols.value), types[cols.value]) if cols.value else F.lit(False)
    value = parse_number(src(cols.value), types[cols.value]) if cols.value else F.lit(None).cast("double")
    ts = parse_timestamp(src(cols.event_ts), types[cols.event_ts], source.ts_unit, source.ts_format)
    lo = datetime(rules.min_ts.year, rules.min_ts.month, rules.min_ts.day, tzinfo=timezone.utc)
    hi = now.astimezone(timezone.utc) + timedelta(days=rules.future_tolerance_days)

    df = raw.select(
        normalise_text(src(cols.user_id)).alias("user_id"),
        normalise_text(src(cols.item_id)).alias("item_id"),
        etype.alias("event_type"),
        ts.alias("event_ts"),
        value.alias("value"),
        value_present.alias("_value_present"),
        normalise_text(src(cols.category)).alias("category"),
        F.col(SOURCE_FILE).alias("source"),
        source_row(raw).alias("_row"),
        F.col(CORRUPT).alias("_corrupt"),
        F.col(ORDINAL),
    )
    bad_value = F.col("_value_present") & (
        F.col("value").isNull() | F.isnan("value")
        | (F.col("value") < F.lit(rules.value_min)) | (F.col("value") > F.lit(rules.value_max)))
    reason = (
        F.when(F.col("_corrupt").isNotNull(), F.lit(MALFORMED))
        .when(F.col("user_id").isNull() | F.col("item_id").isNull(), F.lit(MISSING_ID))
        .when(F.col("event_ts").isNull(), F.lit(UNPARSEABLE_TS))
        .when((F.col("event_ts") < F.lit(lo)) | (F.col("event_ts") > F.lit(hi)), F.lit(TS_OUT_OF_RANGE))
        .when(bad_value, F.lit(VALUE_OUT_OF_RANGE))
        .when(F.col("event_type").isNull() | ~F.col("event_type").isin(allowed), F.lit(UNKNOWN_EVENT_TYPE))
    )
    df = df.withColumn("reason", reason)
    # NaN/out-of-range rows keep their parsed value only in raw; bronze gets finite values.
    eid = F.when(F.col("reason").isNull(), event_id(F.col("user_id"), F.col("item_id"), F.col("event_type"),
                                                    F.col("event_ts"), F.col("value"), F.col("category")))
    df = df.withColumn("event_id", eid)
    first = Window.partitionBy("event_id").orderBy("source", ORDINAL)
    df = df.withColumn("reason", F.when(F.col("event_id").isNotNull() & (F.row_number().over(first) > 1),
                                        F.lit(DUPLICATE)).otherwise(F.col("reason")))
    df = df.withColumn("event_id", F.when(F.col("reason").isNull(), F.col("event_id")))
    df = df.withColumn("raw", rejected_text(F.col("reason"), F.col("_corrupt"), F.col("_row")))
    return df.select(*CLASSIFIED_EVENT_COLUMNS)


def accepted_events(classified: DataFrame, run_id: str, ingested_at: datetime) -> DataFrame:
    """Rows for bronze.events: the accepted rows of :func:`classify_events` (reason null)."""
    return (classified.where(F.col("reason").isNull())
            .select("event_id", "user_id", "item_id", "event_type", "event_ts", "value", "category",
                    "source", F.lit(run_id).alias("ingest_run_id"), F.lit(ingested_at).alias("ingested_at")))


def quarantine_rows(classified: DataFrame, run_id: str, at: datetime) -> DataFrame:
    """Rows for bronze.quarantine: every rejected row with its source file, raw text and reason."""
    return (classified.where(F.col("reason").isNotNull())
            .select(F.lit(run_id).alias("run_id"), "source", "raw", "reason", F.lit(at).alias("quarantined_at")))
