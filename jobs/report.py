"""``xrec report``: a readable report (markdown + PNG) of an evaluation in gold.metrics.

    xrec report [--config conf/local.yaml] [--set eval.eval_id=<id>] [--set eval.report_dir=report]

Without ``eval.eval_id`` the latest ``xrec evaluate`` run (meta.job_log) is reported.
"""

from __future__ import annotations

import sys

from xrec_spark.eval.report import build_report
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(argv, "Write report/index.md and PNG figures for an evaluation.")
    spark = get_spark(cfg)
    lake = Lakehouse(spark, cfg.lakehouse.root)
    result = build_report(lake, cfg)
    print(result.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
