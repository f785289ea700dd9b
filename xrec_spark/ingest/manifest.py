"""Which input files an ingest has already read: meta.ingested_files, and skipping unchanged ones.

A file is *unchanged* when its size, modification time and fingerprint (a hash of its first
and last :data:`BLOCK` bytes, which for Parquet hold the footer) equal those recorded when it
was last ingested, and the rules that turned its rows into bronze rows (its source's config
minus the path, the validation settings, :data:`LOGIC_VERSION`) are the same. Re-reading such
a file can only add nothing (every bronze write is a MERGE), so ingest skips it. A touched or
rewritten file, or the same file under other rules, is read again.

The manifest is written after the bronze tables, so a job that fails anywhere before leaves
it as it was and the next run reads the same files again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from py4j.protocol import Py4JJavaError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from xrec_spark.config import IngestConfig
from xrec_spark.ingest.readers import SourceFile, SourceReadError, read_block, read_error_cause
from xrec_spark.lineage import digest
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, INGESTED_FILES, Lakehouse

# Bytes hashed at each end of a file: a few reads per file, whatever its size.
BLOCK = 64 * 1024
# Bumped when validation changes what the same file and config give (e.g. version 1 added ISO
# 8601 timestamps), so files ingested under older rules are read again.
LOGIC_VERSION = 1
# The config of the events source that decides how its rows are judged (ingest's other keys).
EVENT_RULES = ("event_types", "value_min", "value_max", "min_ts", "future_tolerance_days")


@dataclass(frozen=True)
class FileState:
    """One listed input file and its fingerprint."""

    uri: str
    size: int
    modified_ms: int
    fingerprint: str


def fingerprint(spark: SparkSession, f: SourceFile) -> str:
    """sha256 of the file's size and its first and last :data:`BLOCK` bytes (whole when small).

    Cheap (two reads of 64 KiB), and it catches a rewrite that kept the size and modification
    time (e.g. copied with ``cp -p``) unless both ends are the same too.
    """
    content = hashlib.sha256(str(f.size).encode())
    if f.size <= 2 * BLOCK:
        content.update(read_block(spark, f.uri, 0, f.size))
    else:
        content.update(read_block(spark, f.uri, 0, BLOCK))
        content.update(read_block(spark, f.uri, f.size - BLOCK, BLOCK))
    return content.hexdigest()


def rules_hash(ingest: IngestConfig, kind: str) -> str:
    """Hash of what decides the bronze rows of a file of source ``kind`` ("events" or "items")."""
    source = getattr(ingest, kind)
    if source is None:
        raise ValueError(f"ingest.{kind} is not set; no rules to hash")
    payload = {"source": source.model_dump(mode="json", exclude={"path"}), "logic": LOGIC_VERSION}
    if kind == "events":
        payload["rules"] = ingest.model_dump(mode="json", include=set(EVENT_RULES))
    return digest(payload)


def ingested_files(lakehouse: Lakehouse, kind: str, rules: str) -> dict[str, tuple[int, int, str]]:
    """``{uri: (size, modified_ms, fingerprint)}`` of the files of ``kind`` recorded as ingested
    under ``rules``; empty when nothing may be skipped.

    Nothing is skipped while the source's bronze table is missing: a lakehouse whose bronze
    folder was deleted to start over must read its input again, whatever meta still says.
    """
    target = BRONZE_EVENTS if kind == "events" else BRONZE_ITEMS
    if not (lakehouse.exists(INGESTED_FILES) and lakehouse.exists(target)):
        return {}
    rows = (lakehouse.read(INGESTED_FILES)
            .where((F.col("source") == kind) & (F.col("rules_hash") == rules))
            .select("file", "size", "modified_ms", "fingerprint").collect())
    return {r["file"]: (int(r["size"]), int(r["modified_ms"]), r["fingerprint"]) for r in rows}


def split_unchanged(spark: SparkSession, files: list[SourceFile], known: dict[str, tuple[int, int, str]],
                    key: str) -> tuple[list[FileState], list[FileState]]:
    """(changed or new files, unchanged files), each in listing order; ``key`` is the config key
    of the source's path (for messages).

    Empty files are in neither list: they hold no rows, so there is nothing to read or record.
    """
    to_read: list[FileState] = []
    unchanged: list[FileState] = []
    for f in files:
        if f.size == 0:
            continue
        try:
            state = FileState(f.uri, f.size, f.modified_ms, fingerprint(spark, f))
        except Py4JJavaError as e:  # e.g. no permission, or the file vanished since the listing
            raise SourceReadError(f"{key}: cannot read {f.uri}: {read_error_cause(e)}") from e
        same = known.get(f.uri) == (state.size, state.modified_ms, state.fingerprint)
        (unchanged if same else to_read).append(state)
    return to_read, unchanged


def manifest_rows(spark: SparkSession, read: dict[str, tuple[list[FileState], str]], run_id: str,
                  at: datetime) -> DataFrame:
    """Rows for meta.ingested_files: ``read`` maps a source kind to (files read, rules hash)."""
    rows = [(kind, s.uri, s.size, s.modified_ms, s.fingerprint, rules, run_id, at)
            for kind, (states, rules) in read.items() for s in states]
    # Literals, not spark.createDataFrame: a local list goes through a PythonRDD, so the MERGE
    # materialising its source waited seconds for Python workers to start, for a few rows.
    fields = INGESTED_FILES.schema.fields
    structs = [F.struct(*[F.lit(v).cast(f.dataType).alias(f.name) for v, f in zip(row, fields)]) for row in rows]
    return spark.range(1).select(F.inline(F.array(*structs)))
