"""Benchmark: the full features build on synthetic events against a one-pass Spark baseline.

    .venv/bin/python bench/features.py                          # 1M and 10M events
    .venv/bin/python bench/features.py --events 1000000         # one size only

For each size, in one Spark session on ``local[*]`` with the Spark settings of
``conf/local.yaml`` (driver memory, shuffle partitions):

1. synthetic events and items (``xrec_spark.ingest.synthetic.write_synthetic``; users = events /
   40, items = events / 20, 8 categories) are written as Parquet and loaded into
   ``bronze.events`` / ``bronze.items`` of a fresh lakehouse (not timed: that is ingest's work);
2. **baseline**: one Spark pass that scans the bronze events Parquet and computes a single
   ``groupBy(user_id, category).count()`` into Spark's no-op sink;
3. **build**: :func:`xrec_spark.features.build.build_features` with the default features
   config, every silver table written to Delta;
4. **floor**: what the build must at least do: read bronze.events once, and write Delta tables
   with the build's row counts, column types, array lengths (the mean of each array column)
   and partition values, their values generated rather than computed (no joins, no sampling,
   no MERGE).

Prints events/s of each build stage and of the whole build, the build / floor ratio (the
target is <= 2 at 10M), the build / baseline ratio, and how build time grows from the smallest
to the largest size. Load averages before and after each size tell whether the machine was busy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyspark.sql import Column, DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

from xrec_spark.config import JobConfig, SyntheticConfig, load_config  # noqa: E402
from xrec_spark.features.build import OUTPUTS, build_features  # noqa: E402
from xrec_spark.ingest.synthetic import write_synthetic  # noqa: E402
from xrec_spark.session import get_spark  # noqa: E402
from xrec_spark.table_specs import TableSpec  # noqa: E402
from xrec_spark.tables import BRONZE_EVENTS, BRONZE_ITEMS, Lakehouse  # noqa: E402


def bronze_events(raw: DataFrame) -> DataFrame:
    """bronze.events rows from the synthetic events Parquet (event_id as ingest would hash it)."""
    key = F.concat_ws("|", "user_id", "item_id", "event_type", F.col("event_ts").cast("string"),
                      F.col("value").cast("string"))
    return raw.select(F.sha2(key, 256).alias("event_id"), F.col("user_id").cast("string"),
                      F.col("item_id").cast("string"), "event_type", "event_ts", F.col("value").cast("double"),
                      F.col("category").cast("string"), F.lit("synthetic").alias("source"),
                      F.lit("bench").alias("ingest_run_id"), F.current_timestamp().alias("ingested_at"))


def bronze_items(raw: DataFrame) -> DataFrame:
    return raw.select(F.col("item_id").cast("string"), F.col("category").cast("string"), "title", "text",
                      F.lit(None).cast("string").alias("brand"), F.lit(None).cast("double").alias("price"),
                      F.lit(None).cast(BRONZE_ITEMS.schema["image_vector"].dataType).alias("image_vector"),
                      F.current_timestamp().alias("updated_at"), F.lit("synthetic").alias("source"))


def baseline_seconds(spark: SparkSession, lakehouse: Lakehouse) -> float:
    """One scan of the events Parquet + groupBy(user, category).count(), into the no-op sink."""
    files = lakehouse.files(BRONZE_EVENTS)
    start = time.perf_counter()
    (spark.read.parquet(*files).groupBy("user_id", "category").count()
     .write.format("noop").mode("overwrite").save())
    return time.perf_counter() - start


def _value(kind: T.DataType, seed: Column) -> Column:
    """A generated value of ``kind`` from a per-row hash (spread like ids, so it compresses like them)."""
    h = F.abs(seed) % 1_000_000
    if isinstance(kind, (T.IntegerType, T.LongType)):
        return h.cast(kind)
    if isinstance(kind, (T.DoubleType, T.FloatType)):
        return (h / 1_000_000).cast(kind)
    if isinstance(kind, T.StringType):
        return F.concat(F.lit("v"), h.cast("string"))
    if isinstance(kind, T.TimestampType):
        return F.timestamp_seconds(F.lit(1_577_836_800) + h * 30)
    raise TypeError(f"no generated value for {kind.simpleString()}")


def _elements(kind: T.DataType, seed: Column) -> Callable[[Column], Column]:
    """The array element generator for ``F.transform`` (a one-argument function, as it needs)."""
    return lambda x: _value(kind, F.xxhash64(seed, x))


def generated_like(spark: SparkSession, built: DataFrame, spec: TableSpec) -> DataFrame:
    """Rows of ``spec``'s schema, as many as ``built`` has, with its mean array lengths and its
    partition values (measured before the timed write)."""
    arrays = [f.name for f in spec.schema.fields if isinstance(f.dataType, T.ArrayType)]
    stats = built.agg(F.count(F.lit(1)).alias("_n"), *[F.avg(F.size(c)).alias(c) for c in arrays]).first()
    parts = {c: [r[0] for r in built.select(c).distinct().collect()] for c in spec.partition_by}
    rows = spark.range(int(stats["_n"]))
    columns = []
    for j, f in enumerate(spec.schema.fields):
        seed = F.xxhash64("id", F.lit(j))
        if f.name in parts:
            values = F.array(*[F.lit(v) for v in parts[f.name]])
            columns.append(F.element_at(values, (F.abs(seed) % len(parts[f.name]) + 1).cast("int"))
                           .cast(f.dataType).alias(f.name))
        elif f.name in arrays:
            length = int(round(stats[f.name] or 0))
            element = f.dataType.elementType
            columns.append(F.transform(F.sequence(F.lit(1), F.lit(length)), _elements(element, seed))
                           .alias(f.name) if length else F.array().cast(f.dataType).alias(f.name))
        else:
            columns.append(_value(f.dataType, seed).alias(f.name))
    return rows.select(*columns)


def floor_seconds(spark: SparkSession, lakehouse: Lakehouse, floor_root: str) -> float:
    """One read of bronze.events + a Delta write per build output of the same shape (see module doc)."""
    floor_lake = Lakehouse(spark, floor_root)
    shapes = {spec.qualified: generated_like(spark, lakehouse.read(spec), spec) for spec in OUTPUTS}
    start = time.perf_counter()
    spark.read.parquet(*lakehouse.files(BRONZE_EVENTS)).write.format("noop").mode("overwrite").save()
    for spec in OUTPUTS:
        floor_lake.overwrite(spec, shapes[spec.qualified])
    return time.perf_counter() - start


def run_size(spark: SparkSession, events: int, work: Path, base_cfg) -> dict:
    synth = SyntheticConfig(events=events, users=max(events // 40, 10), items=max(events // 20, 10), categories=8)
    folder = work / f"events-{events}"
    shutil.rmtree(folder, ignore_errors=True)
    load_before = os.getloadavg()[0]
    paths = write_synthetic(spark, synth, str(folder / "raw"))
    lakehouse = Lakehouse(spark, str(folder / "lakehouse"))
    lakehouse.append(BRONZE_EVENTS, bronze_events(spark.read.parquet(paths.events)))
    lakehouse.append(BRONZE_ITEMS, bronze_items(spark.read.parquet(paths.items)))
    cfg = base_cfg.with_overrides([f"lakehouse.root={folder / 'lakehouse'}"])

    baseline_seconds(spark, lakehouse)  # warm-up: JIT and file cache, not counted
    baseline = baseline_seconds(spark, lakehouse)
    start = time.perf_counter()
    summary = build_features(spark, lakehouse, cfg)
    build = time.perf_counter() - start
    floor = floor_seconds(spark, lakehouse, str(folder / "floor"))
    result = {
        "events": events, "users": synth.users, "items": synth.items,
        "baseline_s": round(baseline, 2), "build_s": round(build, 2), "ratio": round(build / baseline, 2),
        "floor_s": round(floor, 2), "build_over_floor": round(build / floor, 2),
        "build_events_per_s": round(events / build),
        "stages": {name: {"s": s, "events_per_s": round(events / s) if s else None}
                   for name, s in summary.stage_seconds.items()},
        "rows": summary.row_counts,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


def sized_bench(doc: str, argv: list[str] | None, prefix: str) -> tuple[argparse.Namespace, JobConfig, SparkSession, Path]:
    """The command line, config, Spark session and scratch folder of a bench run over event
    sizes (this one and bench/ingest.py); prints the session's settings."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--config", default=str(REPO / "conf" / "local.yaml"))
    parser.add_argument("--work-dir", default=None, help="scratch folder (default: a new temp folder)")
    args = parser.parse_args(argv)
    base_cfg = load_config(args.config, ["spark.conf={'spark.ui.enabled': 'false'}"])
    spark = get_spark(base_cfg)
    spark.sparkContext.setLogLevel("ERROR")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix=prefix))
    print(f"Spark {spark.version}, master {spark.sparkContext.master}, cores {os.cpu_count()}, "
          f"driver memory {base_cfg.spark.driver_memory}, shuffle partitions {base_cfg.spark.shuffle_partitions}")
    return args, base_cfg, spark, work


def main(argv: list[str] | None = None) -> int:
    args, base_cfg, spark, work = sized_bench(__doc__, argv, "xrec-bench-features-")
    results = []
    for n in sorted(args.events):
        r = run_size(spark, n, work, base_cfg)
        results.append(r)
        print(json.dumps(r))
        print(f"{n:>11,} events: floor {r['floor_s']:.1f}s, build {r['build_s']:.1f}s "
              f"({r['build_events_per_s']:,} events/s), build/floor {r['build_over_floor']:.2f}x; "
              f"baseline {r['baseline_s']:.1f}s, build/baseline {r['ratio']:.1f}x "
              f"(load {r['load_before']} -> {r['load_after']})")
        for name, st in r["stages"].items():
            print(f"    {name:<18} {st['s']:>8.1f}s {st['events_per_s'] or 0:>12,} events/s")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"growth {a['events']:,} -> {b['events']:,} events ({b['events'] / a['events']:.0f}x): "
              f"build time x{b['build_s'] / a['build_s']:.1f}, floor time x{b['floor_s'] / a['floor_s']:.1f}, baseline time x{b['baseline_s'] / a['baseline_s']:.1f}")
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
