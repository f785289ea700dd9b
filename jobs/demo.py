"""``xrec demo``: every stage that exists so far, on the embedded default config.

Stages run in the order of :data:`STAGES`; each is ``(name, callable)`` where the callable takes
``(spark, lakehouse, cfg)`` and returns the lines it wants printed. Later stages (features,
train, embeddings, candidates, evaluate) are appended to that list. At the end the demo prints
every table that exists, with its location, version and row count, the quarantine by reason,
and what to look at next.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from xrec_spark.config import JobConfig
from xrec_spark.ingest.run import run_ingest
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import ALL_TABLES, BRONZE_QUARANTINE, Lakehouse

Stage = Callable[[SparkSession, Lakehouse, JobConfig], list[str]]


def _ingest(spark: SparkSession, lakehouse: Lakehouse, cfg: JobConfig) -> list[str]:
    return run_ingest(spark, lakehouse, cfg).lines()


# (name, callable), in order; append new stages here.
STAGES: list[tuple[str, Stage]] = [
    ("ingest", _ingest),
]


def table_overview(lakehouse: Lakehouse) -> list[str]:
    """One line per existing table: name, version, rows, location; plus quarantine by reason."""
    lines = []
    for spec in ALL_TABLES:
        version = lakehouse.version(spec)
        if version is not None:
            rows = lakehouse.read(spec).count()
            lines.append(f"  {spec.qualified:<32} v{version:<4} {rows:>10,} rows  {lakehouse.path(spec)}")
    if lakehouse.exists(BRONZE_QUARANTINE):
        by_reason = lakehouse.read(BRONZE_QUARANTINE).groupBy("reason").count().orderBy(F.desc("count")).collect()
        if by_reason:
            lines.append("  quarantine by reason (all runs):")
            lines += [f"    {r['reason']:<24} {r['count']:>8,}" for r in by_reason]
    return lines


def next_steps(lakehouse: Lakehouse) -> list[str]:
    quarantine = lakehouse.path(BRONZE_QUARANTINE)
    return [
        "what to look at next:",
        f"  - why rows were rejected: spark.read.format('delta').load('{quarantine}')"
        ".groupBy('reason').count().show()",
        "  - run `xrec ingest` again: it adds 0 rows (MERGE on event_id); table history shows it",
        f"  - lineage of every run: the meta.job_log table under {lakehouse.root}/meta/job_log",
        "  - README.md, section 'Ingest and sources', for the rules each reason stands for",
    ]


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(argv, "Run every stage of the suite on the embedded default and show the tables.")
    spark = get_spark(cfg)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    print(f"xrec demo: lakehouse at {lakehouse.root}; stages: {', '.join(name for name, _ in STAGES)}")
    for name, stage in STAGES:
        started = time.perf_counter()
        print(f"== {name}")
        for line in stage(spark, lakehouse, cfg):
            print(line)
        print(f"   ({name} took {time.perf_counter() - started:.1f} s)")
    print("tables:")
    print("\n".join(table_overview(lakehouse)))
    print("\n".join(next_steps(lakehouse)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
