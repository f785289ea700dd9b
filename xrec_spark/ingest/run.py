"""The ingest job: raw files -> bronze.events / bronze.items, bad rows -> bronze.quarantine.

Order of work, so that a source that cannot be read leaves every table as it was:

1. read and check every configured source (missing, empty, wrong format/encoding -> raise);
2. classify every row (accepted or a quarantine reason) and count, which reads all the data;
3. only then write: quarantine (MERGE on source, raw, reason), events (insert-only MERGE on
   event_id), items (MERGE on item_id of new or changed items only), and one meta.job_log row.

Re-ingesting the same files therefore commits nothing new to the bronze tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from xrec_spark.config import EventColumns, EventSource, IngestConfig, ItemColumns, JobConfig
from xrec_spark.ingest.items import changed_items, classify_items, derive_items
from xrec_spark.ingest.readers import SourceFile, SourceReadError, read_source
from xrec_spark.ingest.validate import REASONS, accepted_events, classify_events, quarantine_rows
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE, JOB_LOG, Lakehouse

log = logging.getLogger(__name__)

JOB = "ingest"
QUARANTINE_KEYS = ("source", "raw", "reason")
BRONZE = (BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE)


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run read, accepted, rejected (by reason) and wrote."""

    rows_read: int                     # event rows + item rows read
    accepted_events: int               # valid event rows in this batch
    accepted_items: int                # valid item rows (or items derived from this batch's events)
    inserted_events: int               # rows new to bronze.events (0 on a re-ingest)
    quarantined: dict[str, int]        # rejected rows of this batch by reason
    run_id: str
    event_rows_read: int = 0
    item_rows_read: int = 0
    upserted_items: int = 0            # new or changed rows merged into bronze.items
    new_quarantine_rows: int = 0       # rows new to bronze.quarantine (0 on a re-ingest)
    files: list[str] = field(default_factory=list)
    input_versions: dict[str, int] = field(default_factory=dict)
    output_versions: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def lines(self) -> list[str]:
        """A short human summary."""
        out = [f"ingest run {self.run_id}: read {self.rows_read} rows "
               f"({self.event_rows_read} events, {self.item_rows_read} items) from {len(self.files)} file(s)",
               f"  accepted: {self.accepted_events} events ({self.inserted_events} new in bronze.events), "
               f"{self.accepted_items} items ({self.upserted_items} new or changed in bronze.items)",
               f"  quarantined: {sum(self.quarantined.values())} rows "
               f"({self.new_quarantine_rows} new in bronze.quarantine)"]
        out += [f"    {reason}: {n}" for reason, n in self.quarantined.items()]
        return out


def _events_source(ingest: IngestConfig) -> EventSource:
    """The events source, after checking the rules that would reject every row."""
    if ingest.events is None:
        raise ValueError("ingest.events is not set: give the events source (path, format, columns) "
                         "in the config, e.g. --set ingest.events.path=data/events.parquet")
    allowed = {t.strip().lower() for t in ingest.event_types}
    if not ingest.events.columns.event_type and ingest.events.default_event_type.strip().lower() not in allowed:
        raise ValueError(
            f"ingest.events.default_event_type={ingest.events.default_event_type!r} is not in "
            f"ingest.event_types {sorted(allowed)}: every row would be rejected; add it or fix it")
    return ingest.events


def _required(columns: EventColumns | ItemColumns) -> list[str]:
    """Source columns a mapping names (None = not in the source)."""
    return sorted({v for v in columns.model_dump().values() if isinstance(v, str)})


def _reason_counts(classified: DataFrame, what: str) -> tuple[int, dict[str | None, int], int]:
    """(rows, {reason: rows}, distinct accepted item ids); reason None = accepted.

    The one pass over all the data before anything is written: read errors surface here.
    """
    try:
        rows = (classified.groupBy("reason")
                .agg(F.count(F.lit(1)).alias("n"), F.countDistinct("item_id").alias("items")).collect())
    except (PySparkException, Py4JJavaError) as e:
        raise SourceReadError(f"{what}: reading failed: {str(getattr(e, 'java_exception', e)).strip().splitlines()[0][:800]}") from e
    counts = {r["reason"]: int(r["n"]) for r in rows}
    total = sum(counts.values())
    if total == 0:
        raise SourceReadError(f"{what}: the input has no rows (header only, or empty files)")
    return total, counts, next((int(r["items"]) for r in rows if r["reason"] is None), 0)


def _run_key(ingest: IngestConfig, files: list[SourceFile]) -> str:
    """Same config and same files (uri, size, mtime) -> same key."""
    payload = {"ingest": ingest.model_dump(mode="json"), "files": [vars(f) for f in files]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _ordered(counts: dict[str | None, int]) -> dict[str, int]:
    return {r: counts[r] for r in REASONS if counts.get(r)}


def run_ingest(spark: SparkSession, lakehouse: Lakehouse, cfg: JobConfig,
               run_id: str | None = None) -> IngestSummary:
    """Ingest ``cfg.ingest.events`` (and ``cfg.ingest.items``) into the bronze tables.

    Raises :class:`SourceReadError` (a ValueError) naming the file when a source cannot be read
    at all; no table is written in that case. See the module docstring for the write order.
    """
    ingest = cfg.ingest
    source = _events_source(ingest)
    started = datetime.now(timezone.utc)
    run_id = run_id or f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"

    raw_events, event_files, _ = read_source(spark, source.path, source.format, source.csv,
                                             "ingest.events.path", _required(source.columns))
    events = classify_events(raw_events, source, ingest, started)
    items = None
    item_files: list[SourceFile] = []
    if ingest.items is not None:
        raw_items, item_files, _ = read_source(spark, ingest.items.path, ingest.items.format,
                                               ingest.items.csv, "ingest.items.path",
                                               _required(ingest.items.columns))
        items = classify_items(raw_items, ingest.items)
    persisted = [df.persist() for df in (events, items) if df is not None]
    try:
        n_events, event_counts, accepted_items = _reason_counts(events, f"ingest.events.path {source.path!r}")
        n_items, item_counts = 0, {}
        if items is not None and ingest.items is not None:
            n_items, item_counts, accepted_items = _reason_counts(items, f"ingest.items.path {ingest.items.path!r}")
        # Everything is validated; from here on we write.
        before = lakehouse.versions(BRONZE)
        rejected = quarantine_rows(events, run_id, started)
        if items is not None:
            rejected = rejected.unionByName(quarantine_rows(items, run_id, started))
        new_quarantine = 0
        if any(r is not None for r in (*event_counts, *item_counts)):
            metrics = lakehouse.merge(BRONZE_QUARANTINE, rejected, keys=QUARANTINE_KEYS, update=False, job=JOB)
            new_quarantine = metrics.get("numTargetRowsInserted", 0)
        inserted = 0
        if event_counts.get(None):
            metrics = lakehouse.merge(BRONZE_EVENTS, accepted_events(events, run_id, started), update=False, job=JOB)
            inserted = metrics.get("numTargetRowsInserted", 0)
        upserted = _write_items(lakehouse, events, items, started)
        summary = IngestSummary(
            rows_read=n_events + n_items, accepted_events=event_counts.get(None, 0),
            accepted_items=accepted_items, inserted_events=inserted,
            quarantined=_ordered({r: event_counts.get(r, 0) + item_counts.get(r, 0) for r in REASONS}),
            run_id=run_id, event_rows_read=n_events, item_rows_read=n_items, upserted_items=upserted,
            new_quarantine_rows=new_quarantine, files=[f.uri for f in (*event_files, *item_files)],
            input_versions=before, output_versions=lakehouse.versions(BRONZE))
        _log_run(spark, lakehouse, summary, _run_key(ingest, [*event_files, *item_files]), started)
    finally:
        for df in persisted:
            df.unpersist()
    log.info("ingest %s done: %s", run_id, summary.to_json())
    return summary


def _write_items(lakehouse: Lakehouse, events: DataFrame, items: DataFrame | None, at: datetime) -> int:
    """MERGE new or changed items into bronze.items; returns how many rows it inserted or updated."""
    if items is not None:
        candidates = items.where(F.col("reason").isNull())
    elif lakehouse.exists(BRONZE_EVENTS):
        # Derived from ALL events of the items this batch touched, so a small batch does not
        # flip an item's category.
        touched = events.where(F.col("reason").isNull()).select("item_id").distinct()
        candidates = derive_items(lakehouse.read(BRONZE_EVENTS).join(touched, "item_id", "left_semi"))
    else:
        return 0
    existing = lakehouse.read(BRONZE_ITEMS) if lakehouse.exists(BRONZE_ITEMS) else None
    # Unchanged items are left out, so re-ingesting the same items commits nothing; counting
    # first skips the MERGE (whose fixed cost dominates on small batches) when nothing changed.
    changed = changed_items(candidates, existing, at).persist()
    try:
        n_changed = changed.count()
        if n_changed:
            lakehouse.merge(BRONZE_ITEMS, changed, update=True, job=JOB)
    finally:
        changed.unpersist()
    return n_changed


def _log_run(spark: SparkSession, lakehouse: Lakehouse, summary: IngestSummary, run_key: str,
             started: datetime) -> None:
    row = (JOB, summary.run_id, run_key, summary.input_versions, summary.output_versions,
           summary.to_json(), started, datetime.now(timezone.utc))
    # Append, not MERGE: run ids are unique, and a one-row MERGE costs several Spark jobs.
    lakehouse.append(JOB_LOG, spark.createDataFrame([row], JOB_LOG.schema), job=JOB)
