"""``xrec features``: bronze.events / bronze.items -> the silver tables (indexes, interactions,
cross-category matrices, item features, user histories, training examples).

    xrec features [--config conf/local.yaml] [--set features.negatives.per_positive=8 ...]
    spark-submit jobs/build_features.py --config conf/cluster.yaml
"""

from __future__ import annotations

import sys

from xrec_spark.features.build import build_features
from xrec_spark.jobargs import parse_job_args
from xrec_spark.session import get_spark
from xrec_spark.tables import Lakehouse


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_job_args(argv, "Build the silver feature tables from bronze (incremental: skips when "
                                  "bronze and the features config are unchanged).")
    spark = get_spark(cfg)
    lakehouse = Lakehouse(spark, cfg.lakehouse.root)
    summary = build_features(spark, lakehouse, cfg)
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
