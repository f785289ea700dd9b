"""``xrec candidates``: top-K items per (user, category) -> gold.candidates for one run date.

    xrec candidates [--date 2024-05-01] [--model-version V] [--set batch.search=faiss]
    spark-submit jobs/generate_candidates.py --config conf/cluster.yaml --date 2024-05-01

``--date`` defaults to today (UTC). Re-running a date replaces that date's rows.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, timezone

from xrec_spark.batch.generate import generate_candidates
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def run_date(text: str) -> date:
    """argparse type: YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--date {text!r}: expected YYYY-MM-DD") from None


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", type=run_date, default=None, help="run date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--model-version", default=None, help="model_version in gold.runs (default: the latest)")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_job_args(argv, "Generate top-K candidates per user and category for one date.", _arguments)
    day = args.date or datetime.now(timezone.utc).date()
    spark = get_spark(cfg)
    lake = Lakehouse(spark, cfg.lakehouse.root)
    result = generate_candidates(lake, cfg, day, args.model_version)
    print(result.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
