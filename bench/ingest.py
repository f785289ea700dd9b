"""Benchmark: the ingest job on synthetic events against its I/O floor, in one run.

    .venv/bin/python bench/ingest.py                        # 1M and 10M events
    .venv/bin/python bench/ingest.py --events 1000000       # one size only

For each size, in one Spark session on ``local[*]`` with the Spark settings of
``conf/local.yaml`` (driver memory, shuffle partitions):

1. synthetic events and items (``xrec_spark.ingest.synthetic.write_synthetic``; users = events /
   40, items = events / 20, 8 categories, 4 event files) are written as Parquet (not timed);
2. **floor**: read those files once and append the same rows, with bronze's columns and types
   (the event_id hash included), to fresh ``bronze.events`` / ``bronze.items`` Delta tables:
   what any ingest must at least do;
3. **ingest**: :func:`xrec_spark.ingest.run.run_ingest` (what ``xrec ingest`` runs) into another
   fresh lakehouse: validation, quarantine, the insert-only MERGE on event_id, the item MERGE,
   the file manifest and the job log;
4. **grown source**: 10% more events arrive as a fifth file; the floor appends that file's rows to
   the floor tables, the ingest re-runs on the grown folder (the four unchanged files are skipped
   by the manifest, the new one is read and MERGEd into the existing table).

Prints seconds, rows/s, the ingest / floor ratio of both steps (target <= 3 at 1M and 10M) and
the Spark jobs each ran (counted by job group). Load averages before and after each size tell
whether the machine was busy.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyspark.sql import SparkSession  # noqa: E402

from xrec_spark.config import JobConfig, SyntheticConfig  # noqa: E402
from xrec_spark.ingest.run import run_ingest  # noqa: E402
from xrec_spark.ingest.synthetic import synthetic_events, synthetic_ingest_config, write_synthetic  # noqa: E402
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, Lakehouse  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from features import bronze_events, bronze_items, sized_bench  # noqa: E402

GROWTH = 0.1   # the grown source: this share of new events in one more file


def timed(spark: SparkSession, name: str, work: Callable[[], object]) -> tuple[float, int]:
    """(seconds, Spark jobs) of ``work()``, its jobs tagged with job group ``name``."""
    spark.sparkContext.setJobGroup(name, name)
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    jobs = len(spark.sparkContext.statusTracker().getJobIdsForGroup(name))
    spark.sparkContext.setJobGroup("bench", "bench")
    return seconds, jobs


def floor(spark: SparkSession, lakehouse: Lakehouse, events_path: str, items_path: str | None) -> None:
    """Read the source files once and append their rows, in bronze's schema, to Delta."""
    lakehouse.append(BRONZE_EVENTS, bronze_events(spark.read.parquet(events_path)))
    if items_path is not None:
        lakehouse.append(BRONZE_ITEMS, bronze_items(spark.read.parquet(items_path)))


def step(name: str, events: int, floor_run: tuple[float, int], ingest_run: tuple[float, int]) -> dict:
    (floor_s, floor_jobs), (ingest_s, ingest_jobs) = floor_run, ingest_run
    return {"step": name, "events": events, "floor_s": round(floor_s, 2), "ingest_s": round(ingest_s, 2),
            "ratio": round(ingest_s / floor_s, 2), "floor_jobs": floor_jobs, "ingest_jobs": ingest_jobs,
            "ingest_events_per_s": round(events / ingest_s)}


def run_size(spark: SparkSession, events: int, work: Path, base_cfg: JobConfig) -> dict:
    synth = SyntheticConfig(events=events, users=max(events // 40, 10), items=max(events // 20, 10), categories=8)
    folder = work / f"events-{events}"
    shutil.rmtree(folder, ignore_errors=True)
    load_before = os.getloadavg()[0]
    paths = write_synthetic(spark, synth, str(folder / "raw"))
    cfg = base_cfg.model_copy(update={"ingest": synthetic_ingest_config(paths, synth, base_cfg.ingest)})
    floor_lake = Lakehouse(spark, str(folder / "floor"))
    ingest_lake = Lakehouse(spark, str(folder / "lakehouse"))
    first = step("first ingest", events,
                 timed(spark, f"floor-{events}", lambda: floor(spark, floor_lake, paths.events, paths.items)),
                 timed(spark, f"ingest-{events}", lambda: run_ingest(spark, ingest_lake, cfg)))

    # The grown source: new events (another seed, so other event ids) as one more file.
    grown = max(int(events * GROWTH), 1)
    extra = f"{folder}/extra"
    synthetic_events(spark, synth.model_copy(update={"events": grown, "seed": synth.seed + 1})) \
        .coalesce(1).write.mode("overwrite").parquet(extra)
    part = next(Path(extra).glob("part-*.parquet"))
    shutil.move(str(part), f"{paths.events}/part-grown.parquet")
    regrow = step("grown source", grown,
                  timed(spark, f"floor-grown-{events}",
                        lambda: floor(spark, floor_lake, f"{paths.events}/part-grown.parquet", None)),
                  timed(spark, f"ingest-grown-{events}", lambda: run_ingest(spark, ingest_lake, cfg)))
    rows = {"floor_events": floor_lake.read(BRONZE_EVENTS).count(),
            "ingest_events": ingest_lake.read(BRONZE_EVENTS).count()}
    shutil.rmtree(folder, ignore_errors=True)
    return {"events": events, "steps": [first, regrow], "rows": rows,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    args, base_cfg, spark, work = sized_bench(__doc__, argv, "xrec-bench-ingest-")
    for n in sorted(args.events):
        r = run_size(spark, n, work, base_cfg)
        print(json.dumps(r))
        for s in r["steps"]:
            print(f"{n:>11,} events, {s['step']:<13} ({s['events']:,} new rows): floor {s['floor_s']:.1f}s "
                  f"({s['floor_jobs']} jobs), ingest {s['ingest_s']:.1f}s ({s['ingest_jobs']} jobs, "
                  f"{s['ingest_events_per_s']:,} events/s), ingest/floor {s['ratio']:.2f}x "
                  f"(load {r['load_before']} -> {r['load_after']})")
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
