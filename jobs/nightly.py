"""``xrec nightly``: the day's chain, ingest -> features -> [retrain] -> embeddings -> candidates
-> evaluation, restartable (every step records a marker in meta.job_log and is skipped when done).

    xrec nightly [--date 2024-05-01] [--config conf/local.yaml] [--set batch.retrain_every_days=1]
    spark-submit jobs/nightly.py --config conf/cluster.yaml --date 2024-05-01

``--date`` defaults to today (UTC); ``{date}`` in ``ingest.events.path`` becomes that date.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from jobs.generate_candidates import run_date
from xrec_spark.pipeline.nightly import run_nightly
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", type=run_date, default=None, help="run date YYYY-MM-DD (default: today, UTC)")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_job_args(argv, "Run the nightly chain for one date (restartable).", _arguments)
    day = args.date or datetime.now(timezone.utc).date()
    spark = get_spark(cfg)
    lake = Lakehouse(spark, cfg.lakehouse.root)
    result = run_nightly(lake, cfg, day)
    print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
