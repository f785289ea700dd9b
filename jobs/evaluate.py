"""``xrec evaluate``: ranking metrics of the model and the baselines -> gold.metrics.

    xrec evaluate [--config conf/local.yaml] [--set eval.split=test] [--set eval.include_model=false]
    spark-submit jobs/evaluate.py --config conf/cluster.yaml

Full ranking within each category on the held-out split, per category and slice, with group
counts and 95% bootstrap intervals. Re-running on the same inputs replaces its own rows.
"""

from __future__ import annotations

import sys

from xrec_spark.eval.evaluate import evaluate
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(argv, "Evaluate the model and the baselines on the held-out split (gold.metrics).")
    spark = get_spark(cfg)
    lake = Lakehouse(spark, cfg.lakehouse.root)
    result = evaluate(lake, cfg)
    print(result.format(cfg.eval.ks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
