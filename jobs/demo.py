"""``xrec demo``: the whole chain on the embedded default config, end to end.

    ingest -> features -> train -> embeddings -> candidates -> evaluate -> report -> sample

The stages are :data:`xrec_spark.pipeline.stages.STAGES`, run by
:func:`xrec_spark.pipeline.demo.run_demo`; at the end the demo prints every table with its
location, version and row count, the quarantine by reason, and what to look at next.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, timezone

from xrec_spark.jobargs import parse_job_args
from xrec_spark.pipeline.demo import run_demo
from xrec_spark.pipeline.stages import STAGE_NAMES
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", type=date.fromisoformat, default=None,
                        help="run date of the candidates, YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--until", choices=STAGE_NAMES, default=STAGE_NAMES[-1],
                        help="stop after this stage (default: run them all)")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_job_args(argv, "Run every stage of the suite on the embedded default and show the tables.",
                               _arguments)
    day = args.date or datetime.now(timezone.utc).date()
    lake = Lakehouse(get_spark(cfg), cfg.lakehouse.root)
    run_demo(lake, cfg, day, args.until, print)
    return 0


if __name__ == "__main__":
    sys.exit(main())
