"""Benchmark: the ingest job on synthetic events against its I/O floor, in one run.

    .venv/bin/python bench/ingest.py                        # 1M and 10M events
    .venv/bin/python bench/ingest.py --events 1000000       # one size only

For each size, in one Spark session on ``local[*]`` with the Spark settings of
``conf/local.yaml`` (driver memory, shuffle partitions):

1. synthetic events and items (``xrec_spark.ingest.synthetic.write_synthetic``; users = events /
   40, items = events / 20, 8 categories, 4 event files) are written as Parquet (not timed);
2. **first ingest**: the *floor* reads those files once and appends the same rows, with bronze's
   columns and types (the event_id hash included), to fresh ``bronze.events`` / ``bronze.items``
   Delta tables: what any ingest must at least do, without validation or MERGE. The *ingest* is
   :func:`xrec_spark.ingest.run.run_ingest` (what ``xrec ingest`` runs) into another fresh
   lakehouse: validation, quarantine, the insert-only MERGE on event_id, the item MERGE, the file
   manifest and the job log;
3. **grown file**: the last event file is rewritten, same name, with 10% more events (of another
   seed) after its own rows: a changed file, so the manifest reads it again. The floor reads it
   once and appends its new rows (those past its old row count) to the floor tables; the ingest
   re-runs on the grown folder on top of step 2 (the three unchanged event files and the item
   file are skipped by the manifest, the grown one is read whole and MERGEd: its old rows add
   nothing, the new ones are inserted).

Prints, per step, seconds, source rows read per second, the ingest / floor ratio (target <= 3 at
1M and 10M), the Spark jobs each ran (counted by job group) and the passes each made over the
event source (rows its file scans returned / rows in the files it read, from Spark SQL's scan
metrics; cached reads are not scans). Load averages before and after each step tell whether the
machine was busy. Both lakehouses must end with the same number of events.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from xrec_spark.config import JobConfig, SyntheticConfig  # noqa: E402
from xrec_spark.ingest.run import IngestSummary, run_ingest  # noqa: E402
from xrec_spark.ingest.synthetic import synthetic_events, synthetic_ingest_config, write_synthetic  # noqa: E402
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, Lakehouse  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from features import bronze_events, bronze_items, sized_bench  # noqa: E402

GROWTH = 0.1   # the grown file gains this share of the source's events
SLOWEST = 5    # Spark jobs listed per run in the JSON line, slowest first


@dataclass(frozen=True)
class Run:
    """One timed piece of work: wall time, Spark jobs, event-source rows its scans returned."""

    seconds: float
    jobs: int
    scanned_rows: int
    load_before: float
    load_after: float
    slowest: list[str]


def _java_list(spark: SparkSession, seq):  # -> a java.util collection
    """A Scala Seq or Map from Spark's status stores as a Java collection, which py4j iterates."""
    return spark._jvm.scala.jdk.javaapi.CollectionConverters.asJava(seq)


def _number(text: str | None) -> int:
    """Spark UI metric text ("1,000,000") as an int; 0 when absent."""
    digits = re.sub(r"[^0-9]", "", (text or "").split("\n")[0])
    return int(digits) if digits else 0


def scanned_rows(spark: SparkSession, job_ids: set[int], source_dir: str) -> int:
    """Rows returned by the file scans under ``source_dir`` in the SQL executions of ``job_ids``.

    Read from Spark SQL's status store (kept with the UI off): the scan node's description names
    the files it reads, its "number of output rows" metric counts what it read. Reads of cached
    DataFrames or of Delta tables elsewhere do not match, so this counts passes over the source.
    """
    store = spark._jsparkSession.sharedState().statusStore()
    total = 0
    for execution in _java_list(spark, store.executionsList()):
        jobs = {int(j) for j in _java_list(spark, execution.jobs()).keySet()}
        if not jobs or not jobs <= job_ids:
            continue
        metrics = _java_list(spark, store.executionMetrics(execution.executionId()))
        for node in _java_list(spark, store.planGraph(execution.executionId()).allNodes()):
            if not node.name().startswith("Scan ") or source_dir not in node.desc():
                continue
            for metric in _java_list(spark, node.metrics()):
                if metric.name() == "number of output rows":
                    total += _number(metrics.get(metric.accumulatorId()))
    return total


def _slowest(spark: SparkSession, job_ids: set[int]) -> list[str]:
    """The :data:`SLOWEST` longest Spark jobs as "seconds description" (where the time went)."""
    store = spark.sparkContext._jsc.sc().statusStore()
    timed_jobs = []
    for j in job_ids:
        data = store.job(j)
        start, end = data.submissionTime(), data.completionTime()
        if start.isDefined() and end.isDefined():
            what = data.description().getOrElse(None) or data.name()
            timed_jobs.append(((end.get().getTime() - start.get().getTime()) / 1000, f"job {j}: {what}"))
    return [f"{s:.1f}s {what[:110]}" for s, what in sorted(timed_jobs, reverse=True)[:SLOWEST]]


def timed(spark: SparkSession, name: str, source_dir: str, work: Callable[[], object]) -> Run:
    """Run ``work()`` with its Spark jobs tagged by job group ``name``, and measure it."""
    sc = spark.sparkContext
    sc.setJobGroup(name, name)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    sc.setJobGroup("bench", "bench")
    jobs = set(sc.statusTracker().getJobIdsForGroup(name))
    return Run(seconds, len(jobs), scanned_rows(spark, jobs, source_dir), round(load_before, 2),
               round(load_after, 2), _slowest(spark, jobs))


def floor(spark: SparkSession, lakehouse: Lakehouse, events_path: str, items_path: str | None,
          skip_rows: int = 0) -> None:
    """Read the source files once and append their rows (past ``skip_rows`` of each file), in
    bronze's schema, to Delta."""
    events = spark.read.parquet(events_path)
    if skip_rows:
        events = events.where(F.col("_metadata.row_index") >= skip_rows)
    lakehouse.append(BRONZE_EVENTS, bronze_events(events))
    if items_path is not None:
        lakehouse.append(BRONZE_ITEMS, bronze_items(spark.read.parquet(items_path)))


def grow_file(spark: SparkSession, synth: SyntheticConfig, events_dir: str, scratch: str) -> tuple[str, int, int]:
    """Rewrite the last event file of ``events_dir`` in place with :data:`GROWTH` x the source's
    events (another seed) after its own rows; returns (its path, old rows, new rows)."""
    target = sorted(Path(events_dir).glob("part-*.parquet"))[-1]
    old = spark.read.parquet(str(target))
    old_rows = old.count()
    new_rows = max(int(synth.events * GROWTH), 1)
    new = synthetic_events(spark, synth.model_copy(update={"events": new_rows, "seed": synth.seed + 1}))
    # One output partition over the union keeps the old rows first, so row_index tells new from old.
    old.unionByName(new).coalesce(1).write.mode("overwrite").parquet(scratch)
    written = next(Path(scratch).glob("part-*.parquet"))
    # The local file system checks .crc side files: the old one must not outlive its file.
    target.with_name(f".{target.name}.crc").unlink(missing_ok=True)
    shutil.move(str(written), str(target))
    return str(target), old_rows, new_rows


def step(name: str, rows_read: int, new_rows: int, floor_run: Run, ingest_run: Run,
         summary: IngestSummary) -> dict:
    def part(run: Run) -> dict:
        return {"s": round(run.seconds, 2), "rows_per_s": round(rows_read / run.seconds),
                "jobs": run.jobs, "passes": round(run.scanned_rows / rows_read, 2),
                "load": [run.load_before, run.load_after], "slowest_jobs": run.slowest}

    return {"step": name, "rows_read": rows_read, "new_rows": new_rows,
            "ratio": round(ingest_run.seconds / floor_run.seconds, 2),
            "floor": part(floor_run), "ingest": part(ingest_run),
            "ingest_summary": {"event_rows_read": summary.event_rows_read,
                               "inserted_events": summary.inserted_events,
                               "upserted_items": summary.upserted_items,
                               "skipped_files": len(summary.skipped_files)}}


def run_size(spark: SparkSession, events: int, work: Path, base_cfg: JobConfig) -> dict:
    synth = SyntheticConfig(events=events, users=max(events // 40, 10), items=max(events // 20, 10), categories=8)
    folder = work / f"events-{events}"
    shutil.rmtree(folder, ignore_errors=True)
    paths = write_synthetic(spark, synth, str(folder / "raw"))
    cfg = base_cfg.model_copy(update={"ingest": synthetic_ingest_config(paths, synth, base_cfg.ingest)})
    floor_lake = Lakehouse(spark, str(folder / "floor"))
    ingest_lake = Lakehouse(spark, str(folder / "lakehouse"))
    summaries: list[IngestSummary] = []

    def ingest() -> None:
        summaries.append(run_ingest(spark, ingest_lake, cfg))

    first = step("first ingest", events, events,
                 timed(spark, f"floor-{events}", paths.events,
                       lambda: floor(spark, floor_lake, paths.events, paths.items)),
                 timed(spark, f"ingest-{events}", paths.events, ingest), summaries[-1])
    grown, old_rows, new_rows = grow_file(spark, synth, paths.events, f"{folder}/grown")
    regrow = step("grown file", old_rows + new_rows, new_rows,
                  timed(spark, f"floor-grown-{events}", paths.events,
                        lambda: floor(spark, floor_lake, grown, None, skip_rows=old_rows)),
                  timed(spark, f"ingest-grown-{events}", paths.events, ingest), summaries[-1])
    rows = {"expected_events": events + new_rows, "floor_events": floor_lake.read(BRONZE_EVENTS).count(),
            "ingest_events": ingest_lake.read(BRONZE_EVENTS).count()}
    shutil.rmtree(folder, ignore_errors=True)
    return {"events": events, "steps": [first, regrow], "rows": rows}


def print_size(r: dict) -> None:
    print(json.dumps(r))
    for s in r["steps"]:
        fl, ing = s["floor"], s["ingest"]
        print(f"{r['events']:>11,} events, {s['step']:<12} ({s['rows_read']:,} rows read, {s['new_rows']:,} new): "
              f"floor {fl['s']:.1f}s ({fl['jobs']} jobs, {fl['passes']} passes), ingest {ing['s']:.1f}s "
              f"({ing['rows_per_s']:,} rows/s, {ing['jobs']} jobs, {ing['passes']} passes), "
              f"ingest/floor {s['ratio']:.2f}x (load {fl['load'][0]} -> {ing['load'][1]})")
    if len({r["rows"]["expected_events"], r["rows"]["floor_events"], r["rows"]["ingest_events"]}) > 1:
        print(f"    ROW COUNTS DIFFER: {r['rows']}")


def main(argv: list[str] | None = None) -> int:
    args, base_cfg, spark, work = sized_bench(__doc__, argv, "xrec-bench-ingest-")
    for n in sorted(args.events):
        print_size(run_size(spark, n, work, base_cfg))
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
