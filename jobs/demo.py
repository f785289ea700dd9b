"""``xrec demo``: the whole chain on the embedded default config, end to end.

    ingest -> features -> train -> embeddings -> candidates -> evaluate -> report -> sample

Stages run in the order of :data:`STAGES`; each is ``(name, callable)`` where the callable takes
``(spark, lakehouse, cfg, run_date)`` and returns the lines it wants printed. Every stage is
the same function its own job runs (``xrec ingest`` ... ``xrec report``), so the demo shows what
a user gets from the jobs one by one; each is idempotent, so a second demo run is quick and
changes nothing it does not have to. At the end the demo prints every table with its location,
version and row count, the quarantine by reason, and what to look at next.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, datetime, timezone
from typing import Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from xrec_spark.batch.export import export_embeddings
from xrec_spark.batch.generate import generate_candidates
from xrec_spark.batch.showcase import cross_category_sample
from xrec_spark.config import JobConfig
from xrec_spark.eval.evaluate import evaluate
from xrec_spark.eval.report import build_report
from xrec_spark.features.build import build_features
from xrec_spark.ingest.run import run_ingest
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import ALL_TABLES, BRONZE_QUARANTINE, Lakehouse
from xrec_spark.train.launch import run_training

Stage = Callable[[SparkSession, Lakehouse, JobConfig, date], list[str]]


def _ingest(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, day: date) -> list[str]:
    return run_ingest(spark, lake, cfg).lines()


def _features(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, day: date) -> list[str]:
    return build_features(spark, lake, cfg).format().splitlines()


def _train(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, day: date) -> list[str]:
    return run_training(cfg, lake).format().splitlines()


def _embeddings(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, day: date) -> list[str]:
    return [export_embeddings(lake, cfg).format()]


def _candidates(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, day: date) -> list[str]:
    return [generate_candidates(lake, cfg, day).format()]


def _evaluate(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, day: date) -> list[str]:
    return evaluate(lake, cfg).format(cfg.eval.ks).splitlines()


def _report(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, day: date) -> list[str]:
    return [build_report(lake, cfg).format()]


def _sample(spark: SparkSession, lake: Lakehouse, cfg: JobConfig, day: date) -> list[str]:
    return cross_category_sample(lake, day, k=5, users=2)


# (name, callable), in order.
STAGES: list[tuple[str, Stage]] = [
    ("ingest", _ingest),
    ("features", _features),
    ("train", _train),
    ("embeddings", _embeddings),
    ("candidates", _candidates),
    ("evaluate", _evaluate),
    ("report", _report),
    ("sample recommendations (a category the user never touched)", _sample),
]
STAGE_NAMES = [name.split(" ")[0] for name, _ in STAGES]


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


def next_steps(lakehouse: Lakehouse, cfg: JobConfig) -> list[str]:
    quarantine = lakehouse.path(BRONZE_QUARANTINE)
    return [
        "what to look at next:",
        f"  - the evaluation report (model vs baselines per slice, plots): {cfg.eval.report_dir}/index.md",
        f"  - why rows were rejected: spark.read.format('delta').load('{quarantine}')"
        ".groupBy('reason').count().show()",
        "  - run `make demo` again: every stage is idempotent (ingest adds 0 rows, features and",
        "    training are skipped or resumed, candidates replace their own run_date)",
        f"  - lineage of every run: the meta.job_log and gold.runs tables under {lakehouse.root}",
        "  - README.md: 'Ingest and sources', 'Features', 'Training', 'Evaluation' for the rules",
    ]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", type=date.fromisoformat, default=None,
                        help="run date of the candidates, YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--until", choices=STAGE_NAMES, default=STAGE_NAMES[-1],
                        help="stop after this stage (default: run them all)")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_job_args(argv, "Run every stage of the suite on the embedded default and show the tables.",
                               _arguments)
    day = args.date or datetime.now(timezone.utc).date()
    stages = STAGES[:STAGE_NAMES.index(args.until) + 1]
    spark = get_spark(cfg)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    print(f"xrec demo: lakehouse at {lakehouse.root}; run date {day}; "
          f"stages: {', '.join(STAGE_NAMES[:len(stages)])}")
    for name, stage in stages:
        started = time.perf_counter()
        print(f"== {name}")
        for line in stage(spark, lakehouse, cfg, day):
            print(line)
        print(f"   ({name.split(' ')[0]} took {time.perf_counter() - started:.1f} s)")
    print("tables:")
    print("\n".join(table_overview(lakehouse)))
    print("\n".join(next_steps(lakehouse, cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
