"""The demo: every registered stage once, in order, then every table and what to look at next.

Every stage is the same function its own job runs (``xrec ingest`` ... ``xrec report``), so the
demo shows what a user gets from the jobs one by one; each is idempotent, so a second demo run
is quick and changes nothing it does not have to.
"""

from __future__ import annotations

from datetime import date
from typing import Callable

from pyspark.sql import functions as F

from xrec_spark.config import JobConfig
from xrec_spark.pipeline.stages import Context, stages_until
from xrec_spark.tables import ALL_TABLES, BRONZE_QUARANTINE, Lakehouse, TableSpec, each_table


def run_demo(lake: Lakehouse, cfg: JobConfig, day: date, until: str, emit: Callable[[str], None]) -> None:
    """Run the stages through ``until`` and ``emit`` each line as it comes (a stage's header
    before it runs, so a long stage shows what it is doing)."""
    stages = stages_until(until)
    emit(f"xrec demo: lakehouse at {lake.root}; run date {day}; stages: {', '.join(s.name for s in stages)}")
    ctx = Context(lake, cfg, day)
    for stage in stages:
        emit(f"== {stage.title}")
        summary = stage.run(ctx)
        for line in summary.lines():
            emit(line)
        emit(f"   ({stage.name} took {summary.seconds:.1f} s)")
    emit("tables:")
    emit("\n".join(table_overview(lake)))
    emit("\n".join(next_steps(lake, cfg)))


def table_overview(lakehouse: Lakehouse) -> list[str]:
    """One line per existing table: name, version, rows, location; plus quarantine by reason."""
    def describe(spec: TableSpec) -> str | None:
        version = lakehouse.version(spec)
        if version is None:
            return None
        rows = lakehouse.read(spec, version).count()
        return f"  {spec.qualified:<32} v{version:<4} {rows:>10,} rows  {lakehouse.path(spec)}"

    lines = [line for line in each_table(ALL_TABLES, describe) if line is not None]
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
