"""The ingest job: raw files -> bronze.events / bronze.items, bad rows -> bronze.quarantine.

Order of work, so that a source that cannot be read leaves every table as it was:

1. list every configured source and set aside the files ingested before, unchanged, under the
   same rules (meta.ingested_files, see manifest.py); check the rest can be read (missing,
   empty, wrong format/encoding -> raise);
2. classify every row of the files to read (accepted or a quarantine reason) and count, which
   reads all their data;
3. only then write: quarantine (MERGE on source, raw, reason), events (insert-only MERGE on
   event_id), items (MERGE on item_id of new or changed items only), the manifest rows of the
   files read, and one meta.job_log row.

Re-ingesting the same files therefore reads none of them and commits nothing new to the bronze
tables; with ``ingest.skip_unchanged=false`` it reads them and the MERGEs still add nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from xrec_spark.config import EventColumns, EventSource, IngestConfig, ItemColumns, ItemSource, JobConfig
from xrec_spark.ingest.items import changed_items, classify_items, derive_items
from xrec_spark.ingest.manifest import FileState, ingested_files, manifest_rows, rules_hash, split_unchanged
from xrec_spark.ingest.readers import (ORDINAL, SourceFile, SourceReadError, check_not_empty, failed_file,
                                       list_source_files, read_error_cause, read_listed, resolve_format)
from xrec_spark.ingest.validate import REASONS, accepted_events, classify_events, quarantine_rows
from xrec_spark.lineage import JobRun, digest
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE, INGESTED_FILES, Lakehouse

log = logging.getLogger(__name__)

JOB = "ingest"
QUARANTINE_KEYS = ("source", "raw", "reason")
BRONZE = (BRONZE_EVENTS, BRONZE_ITEMS, BRONZE_QUARANTINE)
# Besides the raw files: the manifest of files read before, and the bronze rows items are
# derived from or compared with.
INPUTS = (BRONZE_EVENTS, BRONZE_ITEMS, INGESTED_FILES)
OUTPUTS = (*BRONZE, INGESTED_FILES)
SHOWN_FILES = 5  # skipped files named in the summary lines (all of them are in its JSON)


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
    files: list[str] = field(default_factory=list)           # files read
    skipped_files: list[str] = field(default_factory=list)   # unchanged since ingested: not read
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
        if self.skipped_files:
            names = ", ".join(self.skipped_files[:SHOWN_FILES])
            more = len(self.skipped_files) - SHOWN_FILES
            out.append(f"  skipped {len(self.skipped_files)} unchanged file(s), already ingested under the same "
                       f"rules: {names}{f' and {more} more' if more > 0 else ''} "
                       "(ingest.skip_unchanged=false reads them again)")
        return out


@dataclass(frozen=True)
class SourceBatch:
    """One configured source after listing: the files this run reads and the ones it skips."""

    kind: str                     # "events" or "items"
    key: str                      # config key of the source's path, for messages
    path: str                     # the configured path (file, folder or glob)
    listed: list[SourceFile]      # every file the path matches
    read: list[FileState]         # files read this run
    skipped: list[FileState]      # unchanged since ingested under the same rules
    record: list[FileState]       # files read whose state meta.ingested_files does not hold yet
    rules: str                    # manifest.rules_hash of the source
    raw: DataFrame | None         # the files read (readers.read_listed); None when none is


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


def _open(spark: SparkSession, lakehouse: Lakehouse, ingest: IngestConfig, kind: str) -> SourceBatch:
    """List source ``kind`` of ``ingest``, set aside its unchanged files, and read the others
    lazily (raises :class:`SourceReadError` when they cannot be read at all)."""
    source: EventSource | ItemSource = getattr(ingest, kind)
    key = f"ingest.{kind}.path"
    files = list_source_files(spark, source.path, key)
    fmt = resolve_format(source.format, files, source.path, key)
    check_not_empty(files, key)
    rules = rules_hash(ingest, kind)
    changed, unchanged = split_unchanged(spark, files, ingested_files(lakehouse, kind, rules), key)
    to_read = changed if ingest.skip_unchanged else sorted([*changed, *unchanged], key=lambda s: s.uri)
    skipped = unchanged if ingest.skip_unchanged else []
    if skipped:
        log.info("%s: skipping %d unchanged file(s), already ingested under the same rules: %s",
                 key, len(skipped), ", ".join(s.uri for s in skipped))
    raw = None
    if to_read:
        # Nothing skipped: read the configured path itself, exactly as a first ingest does.
        raw = read_listed(spark, source.path, files, fmt, source.csv, key, _required(source.columns),
                          subset=to_read if skipped else None)
    return SourceBatch(kind, key, source.path, files, to_read, skipped, changed, rules, raw)


def _reason_counts(classified: DataFrame, batch: SourceBatch,
                   count_items: bool = True) -> tuple[int, dict[str | None, int], int]:
    """(rows, {reason: rows}, distinct accepted item ids); reason None = accepted.

    The one pass over all the data before anything is written: read errors surface here, named
    by their JVM cause and the file it names. ``count_items=False`` leaves the item ids
    uncounted (0): with an item file they are not the summary's items, and a distinct count
    is one more aggregation over every row.
    """
    what = f"{batch.key} {batch.path!r}"
    aggregates = [F.count(F.lit(1)).alias("n")]
    if count_items:
        aggregates.append(F.countDistinct("item_id").alias("items"))
    try:
        rows = classified.groupBy("reason").agg(*aggregates).collect()
    except (PySparkException, Py4JJavaError) as e:
        where = failed_file(e, batch.listed)
        raise SourceReadError(f"{what}: reading failed: {where + ': ' if where else ''}{read_error_cause(e)}") from e
    counts = {r["reason"]: int(r["n"]) for r in rows}
    total = sum(counts.values())
    # With unchanged files skipped, changed ones holding only a header are no error: the source
    # as a whole has rows.
    if total == 0 and not batch.skipped:
        raise SourceReadError(f"{what}: the input has no rows (header only, or empty files)")
    accepted_items = next((int(r["items"]) for r in rows if r["reason"] is None), 0) if count_items else 0
    return total, counts, accepted_items


def _run_key(ingest: IngestConfig, files: list[SourceFile]) -> str:
    """Same config and same files (uri, size, mtime) -> same key."""
    return digest({"ingest": ingest.model_dump(mode="json"), "files": [vars(f) for f in files]})


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

    batches = [_open(spark, lakehouse, ingest, "events")]
    if ingest.items is not None:
        batches.append(_open(spark, lakehouse, ingest, "items"))
    event_batch, item_batch = batches[0], (batches[1] if len(batches) > 1 else None)
    # None: every file of that source was skipped as unchanged. The ordinal only ranked
    # duplicates; the cached rows need not carry it.
    events = None
    if event_batch.raw is not None:
        events = classify_events(event_batch.raw, source, ingest, started).drop(ORDINAL)
    items = None
    if item_batch is not None and item_batch.raw is not None and ingest.items is not None:
        items = classify_items(item_batch.raw, ingest.items).drop(ORDINAL)
    persisted = [df.persist() for df in (events, items) if df is not None]
    try:
        n_events, event_counts, accepted_items = 0, {}, 0
        if events is not None:
            n_events, event_counts, accepted_items = _reason_counts(events, event_batch,
                                                                    count_items=item_batch is None)
        n_items, item_counts = 0, {}
        if item_batch is not None:  # with an item file, accepted items are its rows, not the events'
            accepted_items = 0
            if items is not None:
                n_items, item_counts, accepted_items = _reason_counts(items, item_batch)
        # Everything is validated; from here on we write.
        before = lakehouse.versions(BRONZE)
        new_quarantine = 0
        if any(r is not None for r in (*event_counts, *item_counts)):
            new_quarantine = _write_quarantine(lakehouse, [df for df in (events, items) if df is not None],
                                               run_id, started)
        inserted = 0
        if events is not None and event_counts.get(None):
            metrics = lakehouse.merge(BRONZE_EVENTS, accepted_events(events, run_id, started), update=False, job=JOB)
            inserted = metrics.get("numTargetRowsInserted", 0)
        upserted = _write_items(lakehouse, events, items, started, has_item_source=item_batch is not None)
        # After the bronze writes: a run failing before leaves these files to be read again.
        _record_files(spark, lakehouse, batches, run_id, started)
        summary = IngestSummary(
            rows_read=n_events + n_items, accepted_events=event_counts.get(None, 0),
            accepted_items=accepted_items, inserted_events=inserted,
            quarantined=_ordered({r: event_counts.get(r, 0) + item_counts.get(r, 0) for r in REASONS}),
            run_id=run_id, event_rows_read=n_events, item_rows_read=n_items, upserted_items=upserted,
            new_quarantine_rows=new_quarantine, files=[s.uri for b in batches for s in b.read],
            skipped_files=[s.uri for b in batches for s in b.skipped],
            input_versions=before, output_versions=lakehouse.versions(BRONZE))
        key = _run_key(ingest, [f for b in batches for f in b.listed])
        with JobRun(lakehouse, JOB, key, run_id, started_at=started) as job_run:
            job_run.record(summary.input_versions, summary.output_versions, asdict(summary))
    finally:
        for df in persisted:
            df.unpersist()
    log.info("ingest %s done: %s", run_id, summary.to_json())
    return summary


def _write_quarantine(lakehouse: Lakehouse, classified: list[DataFrame], run_id: str, at: datetime) -> int:
    """MERGE the rejected rows of ``classified`` (not empty) into bronze.quarantine; returns
    the rows inserted."""
    rejected = quarantine_rows(classified[0], run_id, at)
    for df in classified[1:]:
        rejected = rejected.unionByName(quarantine_rows(df, run_id, at))
    metrics = lakehouse.merge(BRONZE_QUARANTINE, rejected, keys=QUARANTINE_KEYS, update=False, job=JOB)
    return metrics.get("numTargetRowsInserted", 0)


def _record_files(spark: SparkSession, lakehouse: Lakehouse, batches: list[SourceBatch], run_id: str,
                  at: datetime) -> None:
    """MERGE the files read whose state is new into meta.ingested_files (none: no commit)."""
    read = {b.kind: (b.record, b.rules) for b in batches if b.record}
    if read:
        lakehouse.merge(INGESTED_FILES, manifest_rows(spark, read, run_id, at), update=True, job=JOB)


def _write_items(lakehouse: Lakehouse, events: DataFrame | None, items: DataFrame | None, at: datetime,
                 has_item_source: bool) -> int:
    """MERGE new or changed items into bronze.items; returns how many rows it inserted or updated.

    ``events``/``items``: this run's classified rows, None when every file of the source was
    skipped as unchanged (its items are in bronze.items already). ``has_item_source``: an item
    file is configured, so items never come from the events."""
    if items is not None:
        candidates = items.where(F.col("reason").isNull())
    elif has_item_source:
        # Its files were all skipped: deriving from the events would overwrite the file's titles,
        # texts and categories with the events' guesses.
        return 0
    elif events is not None and lakehouse.exists(BRONZE_EVENTS):
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
